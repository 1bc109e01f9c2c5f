"""The engine's job layer: typed, persisted, queued per machine; and the scheduler of periodic work.

``model`` (plain data), ``store`` (state.db), ``manager`` (queues, running, pause/resume, cancel), ``scheduler``.
"""

from .manager import JobManager
from .model import (FINAL_JOB_STATES, Job, JobKind, JobState, Plan, Step, StepContext, StepSpec, StepState)
from .scheduler import ScheduledTask, Scheduler
from .store import JobStore

__all__ = ["FINAL_JOB_STATES", "Job", "JobKind", "JobManager", "JobState", "JobStore", "Plan", "ScheduledTask",
           "Scheduler", "Step", "StepContext", "StepSpec", "StepState"]
