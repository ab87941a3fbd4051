"""Prefect flows, the CLI and the thin glue between config and grpo_core."""
