"""A `--config` file (JSON or YAML) read into the mapping `PipelineConfig` validates, or one line saying why not."""

from __future__ import annotations

from pathlib import Path


class ConfigFileError(ValueError):
    """A --config file that cannot be read or parsed; names the file and, for a syntax error, the position."""


def load_config_file(path: str | Path) -> dict:
    """The mapping in a JSON or YAML (`.yaml`, `.yml`) config file; ConfigFileError, one line, otherwise."""
    import json

    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigFileError(f"{path}: not valid YAML{where}: {problem}") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigFileError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigFileError(f"{path}: holds a {type(raw).__name__}, not a mapping of config sections and fields")
    return raw
