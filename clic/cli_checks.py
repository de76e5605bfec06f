"""Checks `clic` runs on its options before any work: one line naming the option, never a traceback later.

Kept apart from :mod:`clic.cli` so the checks are one call there. What is refused:

* a ``--resolution`` whose images would not fit this machine's memory (:mod:`clic.limits`);
* numbers that are not finite or out of their documented range (``--eta inf``, ``--eta nan``, a negative
  ``--eta``, ``--seed`` outside [0, 2**32 - 1]);
* an ``--object`` that is empty or blank, holds a placeholder token (``<v*>``), or so long that the prompt around it would overflow the text
  encoder's 77 tokens (the words past the limit, the concept token among them, would be dropped silently);
* an ``--out`` that is an existing file, or a folder that cannot be created or written (checked before
  learning, which may take hours, rather than after it);
* ``CLIC_CACHE`` naming a file instead of a folder;
* a ``--concept`` folder whose ``concept.json`` or weight files are broken (:func:`concept_problem`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

# Seeds feed torch (64 bit) and numpy (32 bit) generators: the common range is the documented one (the one copy:
# the suite reader and clic-bench's --seed take it from here).
MAX_SEED = 2**32 - 1
# Tokens of the longest prompt template around the object word: "a photo of an OBJECT, with <v1*> and
# <v2*> style, zoomed-out" is 15 with the start and end tokens; 24 leaves room for the methods' templates.
PROMPT_TEMPLATE_TOKENS = 24
TEXT_ENCODER_TOKENS = 77


class OptionError(ValueError):
    """A bad option: ``subject`` (the option or file) and the problem, shown as ``subject: problem``."""

    def __init__(self, subject: str, problem: str) -> None:
        self.subject, self.problem = subject, problem
        super().__init__(f"{subject}: {problem}")


def check_number(
    value: float | None,
    option: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
) -> None:
    """A finite number within [minimum, maximum] (either bound optional; the open interval with ``exclusive``);
    None passes (the default). The one copy of this rule: ``clic-bench`` (harness.guards) wraps it."""
    if value is None:
        return
    if not math.isfinite(value):
        raise OptionError(option, f"must be a finite number, got {value}")
    if exclusive and ((minimum is not None and value <= minimum) or (maximum is not None and value >= maximum)):
        raise OptionError(option, f"must lie strictly between {minimum} and {maximum}, got {value}")
    if minimum is not None and value < minimum:
        raise OptionError(option, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise OptionError(option, f"must be at most {maximum}, got {value}")


def check_positive(value: int | None, option: str) -> None:
    """A count that must be positive (steps, images, batch); None passes (the default)."""
    if value is not None and value <= 0:
        raise OptionError(option, f"must be positive, got {value}")


# A concept's placeholder token: "<v*>", "<v1*>", "<w*>" (clic.learn / clic.match) and the like of other methods.
PLACEHOLDER = re.compile(r"<[^<>\s]*\*>")


def placeholder_problem(word: str) -> str | None:
    """Why an object word that holds a placeholder token is refused, or None."""
    found = PLACEHOLDER.search(word)
    if found is None:
        return None
    return (
        f"{word!r} holds the placeholder token {found.group()}: the object word goes beside the concept's token "
        f"in every prompt (\"A chair with <v*> style\"), so it must be a plain word such as 'chair'"
    )


def check_object_word(word: str | None, option: str = "--object") -> None:
    """Not empty, not blank, no placeholder token (the token count is checked by :func:`check_prompt_fits` once a
    tokenizer exists)."""
    if word is not None and not word.strip():
        raise OptionError(option, "must not be empty or blank (the object word goes into every prompt)")
    problem = placeholder_problem(word) if word is not None else None
    if problem is not None:
        raise OptionError(option, problem)


def check_cache_folder(variable: str = "CLIC_CACHE") -> None:
    """The cache folder named by the environment, if any, is not a file (nor under one): a mistake worth a line.
    A read-only cache is not refused: the caches then work without remembering (clic.models)."""
    value = os.environ.get(variable)
    if not value:
        return
    path = Path(value).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == path else f"is under the file {existing}"
        raise OptionError(variable, f"{value} {where}, not a folder (the folder where clic keeps its caches)")


def check_prompt_fits(tokenizer: Any, word: str, option: str = "--object") -> None:
    """Refuse an object word whose prompt would overflow the text encoder (the concept token would be cut)."""
    limit = getattr(tokenizer, "model_max_length", TEXT_ENCODER_TOKENS)
    limit = TEXT_ENCODER_TOKENS if not isinstance(limit, int) or limit > 10_000 else limit
    used = len(tokenizer(word, add_special_tokens=False, verbose=False).input_ids)  # verbose: no length warning
    allowed = limit - PROMPT_TEMPLATE_TOKENS
    if used > allowed:
        raise OptionError(
            option,
            f"{used} tokens, at most {allowed} fit: the prompt around it would exceed the text "
            f"encoder's {limit} tokens and drop the concept token; use a shorter object word",
        )


def check_output_folder(out: str | None, option: str = "--out") -> None:
    """``out`` is (or can become) a writable folder, probed with a temporary file."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OptionError(option, f"{out} is an existing file, not a folder")
    # Nothing is created here (a refused run leaves no folder): the folder, or its nearest existing
    # ancestor, must take a file.
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(option, f"{out} cannot be created: {existing} is a file")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OptionError(option, f"{out} is not a writable folder ({err.strerror or type(err).__name__})") from None


def check_args(args: Any) -> None:
    """Every numeric, word and output option of a parsed `clic` command line (absent ones are skipped)."""
    check_number(getattr(args, "seed", None), "--seed", minimum=0, maximum=MAX_SEED)
    check_number(getattr(args, "checkpoint_every", None), "--checkpoint-every", minimum=0)
    check_number(getattr(args, "eta", None), "--eta", minimum=0.0)
    check_number(getattr(args, "threshold", None), "--threshold", minimum=0.0, maximum=1.0)
    check_object_word(getattr(args, "object", None))
    check_cache_folder()
    resolution = getattr(args, "resolution", None)
    if isinstance(resolution, int) and resolution > 0:
        from .limits import image_memory_problem

        problem = image_memory_problem(resolution)
        if problem is not None:
            raise OptionError("--resolution", f"{resolution} is too large: {problem}")
    if getattr(args, "command", None) != "models":
        check_output_folder(getattr(args, "out", None))


def concept_problem(directory: str | os.PathLike[str]) -> str | None:
    """None for a loadable concept folder, else one line naming the broken file and what is wrong.

    Catches what a killed writer or a full disk leaves: a truncated or empty ``concept.json``, a token file
    that is truncated or holds an empty vector, a truncated weight file.
    """
    from safetensors import safe_open

    folder = Path(directory)
    meta_path = folder / "concept.json"
    if not meta_path.is_file():
        return f"{folder}: not a concept folder (no concept.json)"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{meta_path}: not readable JSON ({' '.join(str(err).split())})"
    if not isinstance(meta, dict):
        return f"{meta_path}: expected a JSON object, got {type(meta).__name__}"
    missing = [
        key for key in ("method", "preset", "tokens", "object_word", "train_kv", "train_q_out") if key not in meta
    ]
    if missing:
        return f"{meta_path}: missing key(s) {', '.join(missing)}"
    token_files = meta.get("token_files") or {}
    if not isinstance(meta["tokens"], list) or not isinstance(token_files, dict):
        return f"{meta_path}: 'tokens' must be a list and 'token_files' an object"
    files = [folder / str(token_files.get(token, "")) for token in meta["tokens"]]
    files += [path for path in folder.glob("*.safetensors") if path not in files]
    for path in files:
        if not path.is_file():
            return f"{path}: missing (named by {meta_path.name})"
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    tensor = handle.get_tensor(key)
                    untrained_layer = key.endswith(".processor")  # the attention file's placeholder
                    if tensor.numel() == 0 and path.name != "arrays.safetensors" and not untrained_layer:
                        return f"{path}: tensor {key!r} is empty"
                    if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                        return f"{path}: tensor {key!r} holds NaN or infinite values"
        except Exception as err:  # safetensors raises its own error types for truncated headers and data
            return f"{path}: unreadable weights ({' '.join(str(err).split())[:200] or type(err).__name__})"
    return None
