"""cluster.yaml: valid for Ray's cluster launcher, and closed by default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_validates_against_rays_cluster_schema(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))  # raises on any key Ray's schema does not know


def test_the_schema_check_can_fail(config):
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = yaml.safe_load(yaml.safe_dump(config))
    broken["provider"]["security_group"]["GroupNme"] = "typo"
    with pytest.raises(ValidationError):
        validate_config(prepare_config(broken))


def test_only_ssh_is_open_to_the_world(config):
    rules = config["provider"]["security_group"]["IpPermissions"]
    open_rules = [r for r in rules if any(ip.get("CidrIp") == "0.0.0.0/0" for ip in r.get("IpRanges", []))
                  or any(ip.get("CidrIpv6") == "::/0" for ip in r.get("Ipv6Ranges", []))]
    assert open_rules, "the SSH rule"
    for rule in open_rules:
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22)


def test_dashboard_listens_on_loopback_only(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head


def test_token_auth_on_every_node(config):
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_secrets_arrive_as_mounted_files_never_as_text(config):
    assert "~/.netrc" in config["file_mounts"]  # the W&B key, as `wandb login` stores it
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"WANDB_API_KEY\s*[=:]", text)
    assert not re.search(r"HF_TOKEN\s*[=:]|AWS_SECRET|aws_secret_access_key", text, re.I)
    assert not re.search(r"\b[0-9a-f]{40}\b", text)  # a W&B key is 40 hex characters


def test_a_cpu_head_and_autoscaling_gpu_workers(config):
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["max_workers"] > t["min_workers"] for t in workers)
    assert any("pip install" in c and "tuner" in c for c in config["setup_commands"])
