"""Names shared by every stage: the keys a trial reports and the statuses a trial ends with.

They live here, once, because the trainable writes them, ASHA and Optuna read them, and the
leaderboard, promotion and tests look them up by name.
"""

# Keys of every report a trial makes (one report = one evaluation + one checkpoint, same step).
EVAL_LOSS = "eval_loss"
TRAIN_LOSS = "train_loss"
LEARNING_RATE = "learning_rate"
EPOCH = "epoch"
STEP = "step"
TOKENS_SEEN = "tokens_seen"
TOKENS_PER_S = "tokens_per_s"
GPU_MEMORY_MB = "gpu_memory_mb"  # peak GPU memory of the trial so far, on GPU only
MFU = "mfu"  # model FLOPs utilization of the training steps since the last report, on a known GPU only
# The costs a multi-objective search (`search.metrics`) can trade against quality, on every report.
TRAIN_TOKENS_PER_S = "train_tokens_per_s"  # training throughput: the same figure as tokens_per_s, by its own name
TRAINABLE_PARAMS = "trainable_params"  # parameters with requires_grad: LoRA's rank shows here
PEAK_MEMORY_MB = "peak_memory_mb"  # GPU: peak allocated memory; CPU: the process's peak resident memory
COST_KEYS = (TRAIN_TOKENS_PER_S, TRAINABLE_PARAMS, PEAK_MEMORY_MB)
REPORT_KEYS = (EVAL_LOSS, TRAIN_LOSS, LEARNING_RATE, EPOCH, STEP, TOKENS_SEEN, TOKENS_PER_S, *COST_KEYS)
# Generation metrics a report carries when search.metric asks for one: the continuations of a fixed
# sample of validation prompts (search.metric_sample), scored as the final evaluation scores the test's.
# Higher is better for each. Exact match needs instruction or chat data (an answer to match).
EVAL_BLEU, EVAL_EXACT_MATCH = "eval_bleu", "eval_exact_match"
GENERATION_METRICS = (EVAL_BLEU, "eval_rouge1", "eval_rouge2", "eval_rougeL", EVAL_EXACT_MATCH)
CUSTOM_METRIC = "eval_custom"  # a metric_fn's plain number, when search.metric is a built-in key
METRIC_PREFIX = "eval_"  # every report key a metric_fn adds starts with it

# Extra keys on a report: how the trial stands after it.
TRIAL_STATUS = "trial_status"  # "running" until the last report, then one of STATUSES
FINAL = "final_report"  # True on the trial's own last report
NODE_ID = "node_id"  # the Ray node(s) the trial ran on (nodes on one machine share an IP)
GPU_IDS = "gpu_ids"  # the GPU ids Ray gave it: "node:ids", one entry per worker
MICRO_BATCH = "micro_batch"  # the per-device batch the trial actually trained with (halved after an OOM)
ACCUMULATION = "accumulation"  # the gradient accumulation it actually used (doubled after an OOM)
REPEAT = "repeat_report"  # True on a closing copy of the last report (not counted again)
START_STEP = "start_step"  # the global step this run of the trial started from (0, or its checkpoint's)
TRIAL_ERROR = "trial_error"  # why a trial that reports itself failed (a bad metric_fn) ended so

# Where this run of the trial spent its time so far, in seconds (each report carries the running totals).
TIME_START = "time_start_s"  # worker process start and imports: the first trial of a worker only
TIME_DATA = "time_data_s"  # opening the prepared data (and drawing the validation sample)
TIME_MODEL = "time_model_s"  # the model from disk or this worker's copy, and the Trainer around it
TIME_TRAIN = "time_train_s"  # training steps
TIME_EVAL = "time_eval_s"  # evaluations at report points
TIME_SAVE = "time_save_s"  # checkpoints written and handed to the reporter
TIME_KEYS = (TIME_START, TIME_DATA, TIME_MODEL, TIME_TRAIN, TIME_EVAL, TIME_SAVE)

# ASHA compares trials after the same amount of data, whatever their batch size.
TIME_ATTR = TOKENS_SEEN

# One list of statuses for every stage and issue.
RUNNING = "running"
PENDING = "pending"
COMPLETED = "completed"  # trained to the end, or to ASHA's max_t
STOPPED_ASHA = "stopped_asha"  # stopped early by ASHA at a rung
STOPPED_PATIENCE = "stopped_patience"  # no improvement for `patience` reports
STOPPED_BUDGET = "stopped_budget"  # the sweep's time budget or Ctrl-C ended it
DIVERGED = "diverged"  # NaN or inf loss
OOM = "oom"
FAILED = "failed"
TIMED_OUT = "timed_out"  # ran longer than search.trial_timeout: the driver ended it
STALLED = "stalled"  # sent no report for search.stall_timeout: the driver ended it
# Ended by the driver's clock, not by the trial: FAIL in Optuna (they did not finish), but what they
# checkpointed before stays promotable.
CUT_OFF = (TIMED_OUT, STALLED)
# A trial a dead driver had started after Tune's last snapshot: Tune cannot resume it, so its record
# is set aside (trials/lost/) and, in Optuna, it is FAIL with this user attribute; its configuration
# runs again as a new trial, which goes on from the lost one's latest checkpoint.
LOST = "lost"
STATUSES = (COMPLETED, STOPPED_ASHA, STOPPED_PATIENCE, STOPPED_BUDGET, DIVERGED, OOM, FAILED, TIMED_OUT, STALLED)
UNFINISHED = (RUNNING, PENDING)  # a record in any other status has ended
# Statuses a trial reports itself on its last report (with a NaN metric): never counted as a report.
# FAILED: a metric_fn that raised or returned no finite number (not retried: it would fail again).
ABORTED = (DIVERGED, OOM, FAILED)
# Statuses whose checkpoints may be promoted: the trial trained normally up to its last report.
PROMOTABLE = (COMPLETED, STOPPED_ASHA, STOPPED_PATIENCE, STOPPED_BUDGET, TIMED_OUT, STALLED)

# `tuner lr-find`'s range by default: Leslie Smith's and fastai's, eight decades in 100 optimizer steps.
LR_FIND_MIN_LR, LR_FIND_MAX_LR, LR_FIND_STEPS = 1e-7, 10.0, 100
