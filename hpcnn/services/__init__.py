"""Use cases behind the CLI commands: plain functions, no printing of their own."""
