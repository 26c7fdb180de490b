"""cluster.yaml: valid for Ray's cluster launcher, and closed by default."""

from __future__ import annotations

import copy
import importlib.metadata
import ipaddress
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "cluster.lock"
SECRET_IDS = {"tuner/wandb-api-key", "tuner/hf-token"}
WORLD = {"0.0.0.0/0", "::/0"}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def all_setup_commands(config) -> list[str]:
    return config["setup_commands"] + config["head_setup_commands"] + config["worker_setup_commands"]


def test_validates_against_rays_cluster_schema(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))  # raises on any key Ray's schema does not know


def test_the_schema_check_can_fail(config):
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = yaml.safe_load(yaml.safe_dump(config))
    broken["setup_comands"] = broken.pop("setup_commands")
    with pytest.raises(ValidationError):
        validate_config(prepare_config(broken))


# ---------------------------------------------------------------------------------------------
# Inbound: SSH from ssh_cidr only. A group Ray creates always gets tcp/22 from 0.0.0.0/0, whatever the
# config lists, so every node type names a group the user creates with the recipe in the comments.


def recipe() -> tuple[str, list[list[str]]]:
    """ssh_cidr and the `authorize-security-group-ingress` calls, as cluster.yaml's comments give them."""
    text = (ROOT / "cluster.yaml").read_text()
    cidrs = re.findall(r"^\s*#\s+ssh_cidr=(\S+)", text, re.MULTILINE)
    calls = [shlex.split(line, comments=True)
             for line in re.findall(r"^\s*#\s+(aws ec2 authorize-security-group-ingress .*)$", text, re.MULTILINE)]
    assert len(cidrs) == 1 and calls
    return cidrs[0], calls


def is_world_open(cidr: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    widest = 16 if net.version == 4 else 48
    return str(net) in WORLD or (net.prefixlen < widest and not net.is_private)


def test_ssh_cidr_is_documented_and_narrow():
    text = (ROOT / "cluster.yaml").read_text()
    assert "# ssh_cidr: your own address or VPN range" in text
    cidr, _ = recipe()
    assert not is_world_open(cidr)


def test_the_world_open_check_can_fail():
    assert is_world_open("0.0.0.0/0") and is_world_open("::/0") and is_world_open("0.0.0.0/1")
    assert not is_world_open("203.0.113.7/32") and not is_world_open("10.0.0.0/8")


def test_every_node_type_names_its_security_group(config):
    # Without SecurityGroupIds Ray creates a group, and opens tcp/22 to 0.0.0.0/0 in it.
    assert "security_group" not in config["provider"]  # would be dead config: Ray ignores it then
    groups = [t["node_config"].get("SecurityGroupIds") for t in config["available_node_types"].values()]
    assert all(groups) and all(g == groups[0] for g in groups)


@pytest.fixture
def aws():
    """A fresh in-process AWS (moto), with Ray's cached boto3 clients dropped before and after."""
    moto = pytest.importorskip("moto")
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.aws import utils as aws_utils

    def clear():
        aws_utils.resource_cache.cache_clear()
        aws_utils.client_cache.cache_clear()
        aws_config._get_subnets_or_die.cache_clear()

    clear()
    with moto.mock_aws():
        yield aws_config
    clear()


def ray_configures_groups(aws_config, config: dict) -> dict:
    """What `ray up` does to security groups: pick subnets, then create or reuse groups."""
    from ray.autoscaler._private.util import prepare_config

    return aws_config._configure_security_group(aws_config._configure_subnet(prepare_config(config)))


def test_ray_up_stops_until_the_group_exists(aws, config):
    import click

    with pytest.raises((AssertionError, click.ClickException)):
        ray_configures_groups(aws, copy.deepcopy(config))  # the placeholder id names no group


def test_the_only_way_in_is_ssh_from_ssh_cidr(aws, config):
    import boto3

    ec2 = boto3.client("ec2", region_name=config["provider"]["region"])
    ssh_cidr, calls = recipe()
    sg = ec2.create_security_group(GroupName="tuner-nodes", Description="tuner nodes")["GroupId"]
    for call in calls:  # the comments' recipe, as the AWS CLI would run it
        args = dict(zip(call[3::2], [a.replace("$ssh_cidr", ssh_cidr).replace("$sg", sg) for a in call[4::2]]))
        assert args.pop("--group-id") == sg and args.pop("--region") == config["provider"]["region"]
        rule = {"IpProtocol": args.pop("--protocol")}
        if "--port" in args:
            rule["FromPort"] = rule["ToPort"] = int(args.pop("--port"))
        if "--cidr" in args:
            rule["IpRanges"] = [{"CidrIp": args.pop("--cidr")}]
        if "--source-group" in args:
            rule["UserIdGroupPairs"] = [{"GroupId": args.pop("--source-group")}]
        assert not args, f"an option this test does not model: {args}"
        ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[rule])

    configured = copy.deepcopy(config)
    for node_type in configured["available_node_types"].values():
        if "SecurityGroupIds" in node_type["node_config"]:
            node_type["node_config"]["SecurityGroupIds"] = [sg]  # what the user pastes over the placeholder
    before = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    configured = ray_configures_groups(aws, configured)
    groups = ec2.describe_security_groups()["SecurityGroups"]

    assert {g["GroupId"] for g in groups} == before, "Ray created a security group"
    assert all(t["node_config"]["SecurityGroupIds"] == [sg] for t in configured["available_node_types"].values())
    for group in groups:
        for rule in group["IpPermissions"]:
            assert not {r["CidrIp"] for r in rule["IpRanges"]} & WORLD
            assert not {r["CidrIpv6"] for r in rule["Ipv6Ranges"]} & WORLD
    rules = next(g for g in groups if g["GroupId"] == sg)["IpPermissions"]
    from_outside = [r for r in rules if r["IpRanges"] or r["Ipv6Ranges"] or r["PrefixListIds"]
                    or any(p["GroupId"] != sg for p in r["UserIdGroupPairs"])]
    assert len(from_outside) == 1
    (ssh,) = from_outside
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in ssh["IpRanges"]] == [ssh_cidr] and not ssh["Ipv6Ranges"]
    assert not any(is_world_open(r["CidrIp"]) for r in ssh["IpRanges"])


# ---------------------------------------------------------------------------------------------
# Instance metadata: IMDSv2 only, on every node type.


def test_node_configs_are_valid_run_instances_parameters(config):
    # Ray's schema takes any node_config; EC2's RunInstances would refuse a misspelt MetadataOptions.
    import botocore.session
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances")
    for node_type in config["available_node_types"].values():
        validate_parameters({**node_type["node_config"], "MinCount": 1, "MaxCount": 1}, model.input_shape)
    with pytest.raises(Exception, match="HttpToken"):
        validate_parameters({"MetadataOptions": {"HttpToken": "required"}, "MinCount": 1, "MaxCount": 1},
                            model.input_shape)


def test_imdsv2_is_required_on_every_node_type(config):
    for name, node_type in config["available_node_types"].items():
        options = node_type["node_config"].get("MetadataOptions", {})
        assert options.get("HttpTokens") == "required", name
        assert options.get("HttpPutResponseHopLimit", 1) <= 2, name


# ---------------------------------------------------------------------------------------------
# The dashboard and Ray's token.


def test_dashboard_listens_on_loopback_only(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head


def test_token_auth_on_every_node(config):
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


# ---------------------------------------------------------------------------------------------
# Credentials: the W&B key and the HF token from Secrets Manager, nothing else of your home directory.


def test_no_home_credential_file_is_mounted_but_rays_token(config):
    for remote, local in config["file_mounts"].items():
        if remote == "~/.ray/auth_token":
            continue
        assert not str(local).startswith(("~", "/")), f"{remote}: {local} is a file of your machine, not the project"
        assert not str(remote).startswith("~/.") and remote != "~/.netrc"


def test_the_two_secrets_come_from_secrets_manager(config):
    commands = " ".join(all_setup_commands(config))
    assert set(re.findall(r"--secret-id\s+(\S+)", commands)) == SECRET_IDS
    assert commands.count("secretsmanager get-secret-value") == len(SECRET_IDS)
    assert set(re.findall(r"--region\s+(\S+)", commands)) == {config["provider"]["region"]}


def secret_commands(config) -> list[str]:
    return [c for c in all_setup_commands(config) if "secretsmanager" in c]


def test_the_netrc_written_has_one_entry(config):
    (netrc,) = [c for c in secret_commands(config) if "~/.netrc" in c]
    written = re.findall(r"printf\s+'([^']*)'[^>]*>\s*~/\.netrc", netrc)
    assert len(written) == 1
    tokens = written[0].replace("\\n", "\n").replace("\\t", "\t").split()  # as printf expands them
    assert [tokens[i + 1] for i, token in enumerate(tokens) if token in ("machine", "default")] == ["api.wandb.ai"]


def test_secrets_are_never_printed_nor_traced(config):
    for command in secret_commands(config):
        assert command.lstrip().startswith("umask 077;")  # before anything is written
        assert not re.search(r"\bset\s+-\w*x|\bbash\s+-\w*x", command)
        names = re.findall(r"\b(\w+)=\$\(aws secretsmanager", command)
        assert names
        for part in re.split(r"&&|\|\||;", command):
            for name in names:
                if f"${name}" in part and not re.fullmatch(rf'\s*\[ -n "\${name}" \]\s*', part):
                    assert re.fullmatch(rf"""\s*printf '[^']*' "\${name}" > ~/\S+\.new\s*""", part), part


@pytest.fixture
def fake_aws(tmp_path):
    """An `aws` that answers get-secret-value from `secrets`, and a home directory to write into."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    (bin_dir / "aws").write_text(
        "#!/usr/bin/env bash\n"
        'while [ $# -gt 0 ]; do [ "$1" = --secret-id ] && id=$2; shift; done\n'
        'f="$FAKE_SECRETS/${id//\\//_}"\n'
        '[ -f "$f" ] && exec cat "$f"\n'
        'echo "An error occurred (ResourceNotFoundException): $id" >&2; exit 254\n')
    (bin_dir / "aws").chmod(0o755)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SECRETS": str(secrets)}
    return home, secrets, env


def run_secret_commands(config, env) -> str:
    out = ""
    for command in secret_commands(config):
        done = subprocess.run(["bash", "-c", command], check=False, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        out += done.stdout + done.stderr
    return out


def test_the_setup_writes_each_secret_mode_600_and_prints_none(config, fake_aws):
    home, secrets, env = fake_aws
    key, token = "SENTINELnodekey" + "0" * 25, "hf_SENTINELnodetoken"
    (secrets / "tuner_wandb-api-key").write_text(key + "\n")
    (secrets / "tuner_hf-token").write_text(token + "\n")
    (home / ".netrc").write_text("machine example.com login me password other\n")  # replaced, not kept
    (home / ".netrc").chmod(0o644)

    out = run_secret_commands(config, env)

    assert key not in out and token not in out
    netrc, hf = home / ".netrc", home / ".cache" / "huggingface" / "token"
    assert netrc.read_text() == f"machine api.wandb.ai login user password {key}\n"
    assert hf.read_text().strip() == token
    for path in (netrc, hf):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not list(home.rglob("*.new"))


def test_an_absent_secret_is_skipped(config, fake_aws):
    home, _, env = fake_aws
    out = run_secret_commands(config, env)  # neither secret exists
    assert not (home / ".netrc").exists() and not (home / ".cache" / "huggingface" / "token").exists()
    assert "tuner/wandb-api-key not read" in out and "tuner/hf-token not read" in out


def test_no_secret_appears_as_text():
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"WANDB_API_KEY\s*[=:]", text)
    assert not re.search(r"HF_TOKEN\s*[=:]|AWS_SECRET|aws_secret_access_key", text, re.IGNORECASE)
    assert not re.search(r"\b[0-9a-f]{40}\b", text)  # a W&B key is 40 hex characters
    assert not re.search(r"\bhf_[A-Za-z0-9]{20,}", text)  # a Hugging Face token


# ---------------------------------------------------------------------------------------------
# Nodes install the driver's versions.


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;+]+)", line.strip())
            assert match, f"not an exact pin without a local tag: {line!r}"
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def test_the_lock_pins_exact_versions():
    pins = lock_pins()
    for name in ("ray", "optuna", "torch", "transformers", "datasets", "wandb", "accelerate", "pyarrow", "numpy",
                 "tokenizers", "safetensors", "pyyaml", "boto3", "rich"):
        assert name in pins, name
    assert "tuner" not in pins and "pytest" not in pins and "moto" not in pins


@pytest.mark.parametrize("name", ["ray", "optuna", "transformers", "datasets", "wandb", "torch"])
def test_the_lock_matches_this_environment(name):
    installed = importlib.metadata.version(name).split("+")[0]  # torch 2.13.0+cpu here, the CUDA build on a node
    assert lock_pins()[name] == installed, f"regenerate {LOCK.relative_to(ROOT)} (see its header)"


def test_the_setup_installs_with_the_lock(config):
    installs = [c for c in all_setup_commands(config) if "pip install" in c and "tuner" in c]
    assert installs
    for command in installs:
        assert "-c ~/tuner/requirements/cluster.lock" in command
    assert config["file_mounts"]["~/tuner"] == "."  # where ~/tuner/requirements/cluster.lock comes from


def test_a_cpu_head_and_autoscaling_gpu_workers(config):
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["max_workers"] > t["min_workers"] for t in workers)
    assert any("pip install" in c and "tuner" in c for c in config["setup_commands"])
