"""Ablations as DVC experiments: the only code that drives dvc and git (the library and the stages never do).

The grid (`grid`) varies one axis of the recipe at a time around the reference configuration (event prompts,
hybrid distillation, the default teacher and prompt generator), each over several seeds (`train.seed`); a
configuration that appears in several groups (the reference row) runs once and is reused in each group's table.

DVC is driven through its command line (`dvc`: the runner and the baseline commit; `queue`: `dvc exp run
--queue -S ...`, `dvc queue start/status/logs`; `show`: `dvc exp show --json`). Known queue problems are
handled: workers that stop while work is still queued are restarted, and a failed experiment is recognised by
its state (`dvc exp show` lists it with the baseline's metrics, which are never used). `run` ties them together;
`results` groups the experiments into the report's rows; `report` writes reports/ablations.md and its CSV,
`charts` its charts.
"""
from cater.experiments.grid import (AXES, CHOICE_TEXT_AXIS, DISTILL_AXIS, EVAL_METRICS, EXPERIMENT_STAGES, GENERATOR_AXIS,
                                    GROUP_ORDER, LABEL_AXIS, LABEL_FRACTIONS, PROMPT_AXIS, SEED_KEY, TEACHER_AXIS,
                                    AblationError, Experiment, Grid, Group, Settings, available_groups, build_grid,
                                    get_dotted, parse_group_specs, plan_waves, read_settings, reference_config,
                                    stage_param_keys, upstream_axes)
from cater.experiments.dvc import COMPARE_ARGS, Runner, compare_command, git_changes, pipeline_files, prepare_baseline, tool_env
from cater.experiments.queue import (QueueStatus, StageCount, count_stage_runs, format_stage_counts, parse_queue_status,
                                     queue_experiments, queue_logs, queue_status, wait_for_queue)
from cater.experiments.show import Baseline, ExpRecord, exp_show_json, fill_eval_from_git, final_states, read_show_json
from cater.experiments.run import AblationResult, log_tail, run_ablations
from cater.experiments.results import Row, Table, summarize
from cater.experiments.report import build_report, conclusions, render_csv, render_pairs, render_table

__all__ = [
    "AXES",
    "AblationError",
    "AblationResult",
    "Baseline",
    "CHOICE_TEXT_AXIS",
    "COMPARE_ARGS",
    "DISTILL_AXIS",
    "EVAL_METRICS",
    "EXPERIMENT_STAGES",
    "ExpRecord",
    "Experiment",
    "GENERATOR_AXIS",
    "GROUP_ORDER",
    "Grid",
    "Group",
    "LABEL_AXIS",
    "LABEL_FRACTIONS",
    "PROMPT_AXIS",
    "QueueStatus",
    "Row",
    "Runner",
    "SEED_KEY",
    "Settings",
    "StageCount",
    "TEACHER_AXIS",
    "Table",
    "available_groups",
    "build_grid",
    "build_report",
    "compare_command",
    "conclusions",
    "count_stage_runs",
    "exp_show_json",
    "fill_eval_from_git",
    "final_states",
    "format_stage_counts",
    "get_dotted",
    "git_changes",
    "log_tail",
    "parse_group_specs",
    "parse_queue_status",
    "pipeline_files",
    "plan_waves",
    "prepare_baseline",
    "queue_experiments",
    "queue_logs",
    "queue_status",
    "read_settings",
    "read_show_json",
    "reference_config",
    "render_csv",
    "render_pairs",
    "render_table",
    "run_ablations",
    "stage_param_keys",
    "summarize",
    "tool_env",
    "upstream_axes",
    "wait_for_queue",
]
