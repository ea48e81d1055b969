"""The optuna storage of a sweep: SQLite in the sweep directory, or a shared database several machines join.

`dpo sweep` (dpo/sweep/driver.py) opens it to run the study; each trial process (dpo/sweep/trial.py) opens it to
report to its trial. The URL reaches a trial in the environment (STORAGE_ENV), not on its command line, because a
database URL may hold a password that a command line shows to every user of the machine.
"""

from __future__ import annotations

import time
import warnings

from dpo.errors import UserError

STORAGE_ENV = "DPO_SWEEP_STORAGE"
HEARTBEAT_S = 15  # shared databases: a trial whose process stopped beating for GRACE_S is failed and retried
GRACE_S = 60


def open_storage(url: str, shared: bool = False):
    """optuna's RDB storage for `url`; `shared`: heartbeats, so trials of a dead machine are failed and retried."""
    import optuna
    import sqlalchemy.exc

    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3 (a dependency), not psycopg2
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    heartbeat = {}
    if shared:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
        heartbeat = {
            "heartbeat_interval": HEARTBEAT_S,
            "grace_period": GRACE_S,
            "heartbeat_stale_trial_callback": retry,
        }
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # processes starting together on an empty database race to create optuna's tables; the loser
            # finds them made on its next try
            if attempt == 4:
                raise UserError(f"cannot open the optuna storage: {_first_line(exc)}", where="--storage") from None
            time.sleep(0.5 + attempt)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            raise UserError(f"cannot open the optuna storage: {_first_line(exc)}", where="--storage") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
