"""The prompts of ``tinygpt sample``: from ``--prompt``, ``--prompt-file`` or ``--prompts-file`` (one of them),
and whether they are instructions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import opt
from ..errors import TinyGPTError


@dataclass
class PromptOptions:
    prompt: str = opt("", "text to continue (default: start of a document)")
    prompt_file: str | None = opt(None, "read the prompt from this file instead")
    prompts_file: str | None = opt(None, "a file of prompts, one per line, generated as one batch")
    instruct: bool = opt(False, "the prompt is an instruction: lay it out in the fine-tune's prompt template "
                                "(--template, --system) and print the response, which ends at the end-of-text token")

    def __post_init__(self) -> None:
        # Each names the whole prompt: one given beside another would be silently dropped.
        given = [flag for flag, value in (("--prompt", self.prompt), ("--prompt-file", self.prompt_file),
                                          ("--prompts-file", self.prompts_file)) if value]
        if len(given) > 1:
            raise TinyGPTError(f"{' and '.join(given)} each give the prompt; keep one of them")

    def prompts(self) -> list[str]:
        """The prompts to generate from (one, unless a --prompts-file lists several)."""
        if self.prompt_file:
            return [_read(self.prompt_file, "--prompt-file")]
        if self.prompts_file:
            prompts = [line for line in _read(self.prompts_file, "--prompts-file").splitlines() if line.strip()]
            if not prompts:
                raise TinyGPTError(f"--prompts-file {self.prompts_file} has no prompts; write one per line")
            return prompts
        return [self.prompt]


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TinyGPTError(f"cannot read {flag} {path}: {e}; give a UTF-8 text file") from None
