"""One configuration dataclass per command, declared once (``settings`` explains how), and the choice
lists of their settings (``choices``). Light to import: the CLI builds its options from these."""

from meerkat_core.config.evaluate import EvalConfig
from meerkat_core.config.export import ExportConfig
from meerkat_core.config.gradip import InspectConfig
from meerkat_core.config.mask import MaskConfig
from meerkat_core.config.partition import PartitionConfig
from meerkat_core.config.report import ReportConfig
from meerkat_core.config.tasks import TaskShowConfig
from meerkat_core.config.train import CheckpointSettings, EvalSettings, TrainConfig, VPSettings

__all__ = [
    "CheckpointSettings", "EvalConfig", "EvalSettings", "ExportConfig", "InspectConfig", "MaskConfig",
    "PartitionConfig", "ReportConfig", "TaskShowConfig", "TrainConfig", "VPSettings",
]
