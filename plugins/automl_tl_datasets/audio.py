"""Audio data sets that exist offline: spoken digits synthesised with espeak-ng, and Asterisk's voice prompts.

* :func:`make_spoken_digits` writes one wav file per (voice, digit word) with espeak-ng
  (Debian ``espeak-ng``, GPL-3), each voice being an espeak-ng voice variant (the files of
  ``espeak-ng-data/voices/!v``) with its own pitch and speed; files already there are kept.
* :func:`load_asterisk_prompts` lists the telephony prompts of Debian's
  ``asterisk-core-sounds-<lang>-wav`` packages (CC BY-SA 3.0; one speaker per language, 8 kHz),
  labelled by language.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from automl_tl.errors import DataError

logger = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ASTERISK_DIR = Path("/usr/share/asterisk/sounds")
ASTERISK_LANGUAGES = ("en", "es", "fr", "it", "ru")
#: variants tried first: espeak-ng's plain male and female voices and its Klatt synthesisers sound
#: like speech; the remaining variants (robots, whispers, characters) follow in alphabetical order
PREFERRED_VARIANTS = (
    "m1",
    "f1",
    "m2",
    "f2",
    "m3",
    "f3",
    "m4",
    "f4",
    "m5",
    "f5",
    "m6",
    "m7",
    "m8",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
)
ESPEAK_DATA_CANDIDATES = (
    Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data"),
    Path("/usr/lib/aarch64-linux-gnu/espeak-ng-data"),
    Path("/usr/share/espeak-ng-data"),
    Path("/usr/lib/espeak-ng-data"),
)


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng variant, a pitch (0-99) and a speed (words per minute)."""

    variant: str
    pitch: int
    speed: int

    @property
    def name(self) -> str:
        return f"{self.variant}-p{self.pitch}-s{self.speed}"


def _espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise DataError("espeak-ng is not installed; install it with 'apt-get install espeak-ng'")
    return path


def espeak_variants() -> list[str]:
    """espeak-ng's voice variants (file names in ``espeak-ng-data/voices/!v``), preferred ones first."""
    folders = []
    try:  # espeak-ng prints where its data are: "... Data at: /usr/lib/.../espeak-ng-data"
        version = subprocess.run([_espeak(), "--version"], capture_output=True, text=True, timeout=30).stdout
        match = re.search(r"Data at:\s*(\S+)", version)
        if match:
            folders.append(Path(match[1]))
    except (OSError, subprocess.SubprocessError):
        pass
    for data in folders + list(ESPEAK_DATA_CANDIDATES):
        folder = data / "voices" / "!v"
        if folder.is_dir():
            # names with spaces cannot be given to -v reliably
            names = sorted(p.name for p in folder.iterdir() if p.is_file() and " " not in p.name)
            return [v for v in PREFERRED_VARIANTS if v in names] + [v for v in names if v not in PREFERRED_VARIANTS]
    raise DataError(
        "cannot find espeak-ng's voice variants (espeak-ng-data/voices/!v); "
        "install them with 'apt-get install espeak-ng-data'"
    )


def make_voices(
    count: int, seed: int = 0, pitch_range: tuple[int, int] = (25, 75), speed_range: tuple[int, int] = (130, 200)
) -> list[Voice]:
    """``count`` voices: variants in :func:`espeak_variants` order (repeated if needed), seeded pitch and speed."""
    variants = espeak_variants()
    rng = np.random.default_rng(seed)
    voices = []
    for i in range(count):
        pitch = int(rng.integers(pitch_range[0], pitch_range[1] + 1))
        speed = int(rng.integers(speed_range[0], speed_range[1] + 1))
        voices.append(Voice(variants[i % len(variants)], pitch, speed))
    return voices


def _synthesise(voice: Voice, word: str, path: Path, language: str) -> None:
    """Write ``word`` spoken by ``voice`` to ``path``, atomically (a stopped run leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".wav", dir=path.parent)
    os.close(handle)
    try:
        command = [
            _espeak(),
            "-v",
            f"{language}+{voice.variant}",
            "-s",
            str(voice.speed),
            "-p",
            str(voice.pitch),
            "-w",
            temp,
            word,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or os.path.getsize(temp) <= 44:  # 44 bytes: a wav header and no samples
            reason = ((result.stderr or "").strip().splitlines() or ["no audio"])[0]
            raise DataError(f"espeak-ng could not write {path}: {reason}")
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def make_spoken_digits(
    out_dir: str | Path,
    voices: int = 20,
    seed: int = 0,
    words: Sequence[str] = DIGIT_WORDS,
    language: str = "en-us",
    workers: int = 4,
) -> pd.DataFrame:
    """Spoken digits: one wav per voice and word in ``out_dir/<voice>/<word>.wav``, synthesised by espeak-ng.

    Returns a DataFrame with columns ``audio`` (the wav path), ``label`` (the word) and ``voice``
    (the voice's name; split by it to test on voices never heard in training). Only files that
    are missing are synthesised, so a second call with the same arguments is fast. ``voices``
    beyond the number of espeak-ng variants (about 100) reuse variants with other pitches and speeds.
    """
    if voices < 1:
        raise DataError(f"number of voices must be at least 1, got {voices}")
    out_dir = Path(out_dir)
    rows, missing = [], []
    for voice in make_voices(voices, seed):
        for word in words:
            path = out_dir / voice.name / f"{word}.wav"
            rows.append({"audio": str(path), "label": word, "voice": voice.name})
            if not path.is_file():
                missing.append((voice, word, path))
    if missing:
        logger.info("synthesising %d of %d spoken-digit clips into %s", len(missing), len(rows), out_dir)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # each job is an espeak-ng process
            list(pool.map(lambda job: _synthesise(job[0], job[1], job[2], language), missing))
    return pd.DataFrame(rows)


def load_asterisk_prompts(
    languages: Sequence[str] = ASTERISK_LANGUAGES,
    root: str | Path = ASTERISK_DIR,
    max_per_language: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Asterisk's telephony prompts, labelled by language: columns ``audio`` (wav path), ``label``, ``prompt``.

    ``prompt`` is the file's path inside its language folder (the same prompt exists in several
    languages). Silent files (Asterisk ships ``silence/*.wav``) and unreadable ones are left out.
    ``max_per_language`` keeps a seeded random sample of that many prompts per language.
    """
    from automl_tl.data.readers import read_audio

    root = Path(root)
    frames = []
    for number, language in enumerate(languages):
        folder = root / language
        files = sorted(folder.rglob("*.wav")) if folder.is_dir() else []
        if not files:
            raise DataError(
                f"no Asterisk prompts for language {language!r} in {folder}; install them with "
                f"'apt-get install asterisk-core-sounds-{language}-wav'"
            )
        kept, dropped = [], 0
        for file in files:
            try:
                read_audio(file)
            except DataError:
                dropped += 1
                continue
            kept.append(file)
        if dropped:
            logger.debug("left out %d silent or unreadable Asterisk prompts of %s", dropped, language)
        if max_per_language is not None and len(kept) > max_per_language:
            rng = np.random.default_rng([seed, number])  # a different sample for each language
            kept = sorted(kept[i] for i in rng.choice(len(kept), size=max_per_language, replace=False))
        frames.append(
            pd.DataFrame(
                {
                    "audio": [str(f) for f in kept],
                    "label": language,
                    "prompt": [str(f.relative_to(folder)) for f in kept],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
