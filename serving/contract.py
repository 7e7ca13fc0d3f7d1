"""The version of the bot's contract (docs/bot-contract.md, "Versions"): one number for the documents a bot reads or
writes — the scoring result, the shadow-log line and the publish pointer. Each carries it as ``contract_version``,
and each version's JSON Schemas are files under ``docs/schemas/`` that never change once published: a change to
any of the three documents is a new version and new schema files."""

from __future__ import annotations

CONTRACT_VERSION = 3
DOCUMENTS = ("score", "shadow-log", "publish-pointer")


def schema_file(document: str, version: int = CONTRACT_VERSION) -> str:
    """The schema's file name under docs/schemas/, e.g. ``score.v3.schema.json``."""
    if document not in DOCUMENTS:
        raise ValueError(f"{document!r} is not a document of the bot's contract ({', '.join(DOCUMENTS)})")
    return f"{document}.v{version}.schema.json"
