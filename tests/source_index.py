"""The sources the presets cite, kept in the tests: each reference repository's cited files with their length in
lines (at the commit read), and each paper's sections. :func:`citation_problems` checks one declared source
string against them: every "L<n>" it names lies inside a listed file of the repository it names, and the string
names at least one file and line, or a listed paper section, or says the value is the project's choice.

Commits read: Mehdi0xC/clic a5649f6, google/break-a-scene b142cf2, haoosz/ConceptExpress db1dc61,
JarrentWu1031/SingleInsert b5e707f, huggingface/diffusers 58eb52c, facebookresearch/CutLER cca0a27.
"""

from __future__ import annotations

import re

# repository label as the presets write it -> {file: number of lines}
REPOSITORIES: dict[str, dict[str, int]] = {
    "Mehdi0xC/clic": {
        "learning.py": 1145,
        "transfer.py": 181,
        "reproduce.sh": 46,
        "configs/default.yaml": 51,
        "utils/pipe_utils.py": 109,
        "utils/io_utils.py": 92,
        "utils/diff_utils.py": 104,
        "src/att_processor.py": 164,
    },
    "google/break-a-scene": {"train.py": 1524},
    "haoosz/ConceptExpress": {
        "train.py": 1919,
        "scripts/train.sh": 15,
        "ptp_utils.py": 804,
        "clustering/finch.py": 277,
        "utils/loss.py": 76,
        "emd/emd.py": 264,
    },
    "JarrentWu1031/SingleInsert": {"train.py": 1313},
    "diffusers": {
        "examples/custom_diffusion/train_custom_diffusion.py": 1382,
        "examples/custom_diffusion/README.md": 279,
        "examples/textual_inversion/textual_inversion.py": 1024,
        "examples/textual_inversion/README.md": 156,
        "examples/research_projects/realfill/train_realfill.py": 984,
        "examples/research_projects/realfill/README.md": 118,
    },
    "facebookresearch/CutLER": {"maskcut/crf.py": 46},
}

# paper label as the presets write it -> its sections ("§4 preamble": the text before §4.1)
PAPERS: dict[str, set[str]] = {
    "paper (CVPR 2024)": {
        "§1",
        "§3.1",
        "§3.2",
        "§3.3",
        "§4 preamble",
        "§4.1",
        "§4.2",
        "supplement B.2",
        "supplement B.3",
    },
    "CLiC paper": {"§1", "§3.1", "§3.2", "§3.3", "§4 preamble", "§4.1", "§4.2", "supplement B.2", "supplement B.3"},
    "SingleInsert (Wu et al., arXiv 2310.08094)": {"§3.2", "§3.3", "§3.2-3.3", "§4.1"},
    "Rahman et al. 2024": {"§3"},
    "Textual Inversion (Gal et al., ICLR 2023)": {"§3"},
    "Custom Diffusion (Kumari et al., CVPR 2023)": {"§3.1", "§4"},
}

_FILE = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|sh|yaml|md))\b")
_LINE = re.compile(r"\bL(\d+)(?:-(\d+))?\b")
_SECTION = re.compile(r"(§\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?(?: preamble)?|supplement B\.\d)")


def _repository(source: str, file: str, before: int) -> str | None:
    """The repository a file mention belongs to: the last repository label written before it, else the one
    listed repository that has the file."""
    named = [(source.rfind(label, 0, before), label) for label in REPOSITORIES if source.rfind(label, 0, before) >= 0]
    if named:
        return max(named)[1]
    holders = [label for label, files in REPOSITORIES.items() if file in files]
    return holders[0] if len(holders) == 1 else None


def citation_problems(source: str) -> list[str]:
    """What is wrong with one source string (empty: it cites what exists)."""
    problems, located = [], 0
    events = sorted(
        [(m.start(), "file", m) for m in _FILE.finditer(source)]
        + [(m.start(), "line", m) for m in _LINE.finditer(source)]
    )
    current: tuple[str, str] | None = None
    for position, kind, match in events:
        if kind == "file":
            file = match.group(1)
            repository = _repository(source, file, position)
            if repository is None or file not in REPOSITORIES[repository]:
                problems.append(f"{file!r} is not a listed file of {repository or 'any listed repository'}")
                current = None
            else:
                current = (repository, file)
            continue
        if current is None:
            problems.append(f"{match.group(0)} names no listed file before it")
            continue
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        length = REPOSITORIES[current[0]][current[1]]
        if not 1 <= first <= last <= length:
            problems.append(f"{current[1]} {match.group(0)} is outside its {length} lines")
        else:
            located += 1
    sections = []
    for match in _SECTION.finditer(source):
        papers = [
            (source.rfind(label, 0, match.start()), label)
            for label in PAPERS
            if 0 <= source.rfind(label, 0, match.start())
        ]
        if not papers:
            problems.append(f"{match.group(1)} names no listed paper before it")
        elif match.group(1) not in PAPERS[max(papers)[1]]:
            problems.append(f"{match.group(1)} is not a section of {max(papers)[1]}")
        else:
            sections.append(match.group(1))
    chosen = "our choice" in source.lower() or "project's choice" in source.lower()
    if not (located or sections or chosen):
        problems.append("names no file and line, no paper section, and is not labelled the project's choice")
    return problems
