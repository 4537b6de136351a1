"""The service as a process: settings, app wiring, CLI, supervisor, embedded children, logs."""
