"""`dpo sweep`: many training runs over a search space with optuna. spec.py checks the spec, driver.py runs the
study, trial.py is one trial's process (a training run with an optuna callback), storage.py opens the study's
database."""
