"""The commands core ships, as a plain table (no pluggy: read at start-up).

Each factory is the command's class: like every registration, ``factory()``
builds the command (see ``register_commands`` in the hooks reference).
"""

from __future__ import annotations

#: name -> (factory, one-line summary) of the commands core ships.
BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": (
        "crucible_core.cli.plugins_cmd:_PluginsCommand",
        "List plugins and what they register",
    ),
    "ir": ("crucible_core.cli.ir_cmd:_IrCommand", "Validate IR files, print schemas and defaults"),
    "doctor": (
        "crucible_core.cli.doctor_cmd:_DoctorCommand",
        "Check the environment and each plugin's health",
    ),
    "plan": (
        "crucible_core.cli.plan_cmd:_PlanCommand",
        "Check a training job against its backend and estimate tokens, time and cost",
    ),
    "train": (
        "crucible_core.cli.train_cmd:_TrainCommand",
        "Run a training job (TOML/JSON) on its backend, with a progress bar",
    ),
    "resume": (
        "crucible_core.cli.train_cmd:_ResumeCommand",
        "Continue a stopped or crashed training run from its newest checkpoint",
    ),
    "sample": (
        "crucible_core.cli.sample_cmd:_SampleCommand",
        "Generate text from a run's weights or a checkpoint",
    ),
    "export": (
        "crucible_core.cli.export_cmd:_ExportCommand",
        "Export a run's weights: PEFT adapter, merged model, safetensors, ONNX or GGUF",
    ),
    "ask": (
        "crucible_core.cli.ask_cmd:_AskCommand",
        "Ask a backend, an ensemble of it, or a hedged copy one question",
    ),
    "runs": (
        "crucible_core.cli.runs_cmd:_RunsCommand",
        "List training runs, show one, or diff two runs' records",
    ),
    "jobs": (
        "crucible_core.cli.jobs_cmd:_JobsCommand",
        "Submit, list, show, cancel and retry jobs in the durable queue",
    ),
    "worker": (
        "crucible_core.cli.worker_cmd:_WorkerCommand",
        "Claim and run queued jobs until SIGTERM/SIGINT, then drain",
    ),
    "artifacts": (
        "crucible_core.cli.artifacts_cmd:_ArtifactsCommand",
        "Verify a run's artifacts against the sha256 in its manifest",
    ),
    "lineage": (
        "crucible_core.cli.lineage_cmd:_LineageCommand",
        "Show where a run or artifact came from and what came of it",
    ),
}
