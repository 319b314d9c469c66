"""The one file layer: every file friendly-sam reads or writes in a run directory, a data directory or a
config goes through here (docs/files.md).

* :mod:`.safe`: opening without blocking (FIFOs, devices and directories are refused before a byte is
  read), size limits, atomic writes (temporary file, fsync, rename) and appends that never follow a
  symbolic link and never leave their directory, one file-mode policy (the umask), locked
  read-merge-write for files several processes update.
* :mod:`.bounded`: the readers of structured files (JSON, JSON lines, TOML, YAML, torch files): size,
  nesting depth, YAML aliases and integer sizes bounded; each refusal one line naming the file and limit.
* :mod:`.environment`: memory the process may use (MemAvailable, RLIMIT_AS, cgroup), a console that
  went away, long strings shortened for messages.
"""

from .bounded import (
    LIMITS,
    Limits,
    check_structure,
    load_torch_file,
    parse_json,
    parse_toml,
    parse_yaml,
    read_json_file,
    read_jsonl_file,
)
from .environment import (
    MemoryNeedError,
    check_memory,
    format_bytes,
    memory_available,
    protect_console,
    shorten,
)
from .safe import (
    FileRefused,
    WriteError,
    append_line,
    check_entries,
    file_mode,
    open_lock_file,
    read_bytes,
    read_text,
    remove_stale_temp_files,
    update_file,
    write_atomic,
    write_text_atomic,
)

__all__ = [
    "LIMITS",
    "FileRefused",
    "Limits",
    "MemoryNeedError",
    "WriteError",
    "append_line",
    "check_memory",
    "check_structure",
    "file_mode",
    "format_bytes",
    "load_torch_file",
    "memory_available",
    "update_file",
    "check_entries",
    "open_lock_file",
    "parse_json",
    "parse_toml",
    "parse_yaml",
    "protect_console",
    "read_bytes",
    "read_json_file",
    "read_jsonl_file",
    "read_text",
    "remove_stale_temp_files",
    "shorten",
    "write_atomic",
    "write_text_atomic",
]
