"""One router per resource: predict (and feedback, experiment, drift), models, admin, health, status."""
