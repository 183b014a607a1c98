"""Training package: `python -m training <task> --help` (see __main__.py for the launcher)."""
