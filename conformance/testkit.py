"""The NIST test kit layout on disk: one folder per test, sections listed in index.idx,
collection tags in collections.txt, the title on the first line of readme.txt."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_SOURCE_ID = "1.3.6.1.4.1.21367.4"


@dataclass
class Section:
    name: str
    path: str            # folder holding testplan.xml
    exists: bool = True  # index.idx may list sections that are not there (12029a)


@dataclass
class TestCase:
    __test__ = False  # not a pytest class, despite the name

    id: str
    path: str
    title: str = ""
    collections: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def plan_path(self, section: Section) -> str:
        return os.path.join(section.path, "testplan.xml")


class TestKit:
    """A test kit folder: accepts the toolkitx folder, its testkit/ folder, or testkit/tests/."""
    __test__ = False  # not a pytest class, despite the name


    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.tests_dir = self._find_tests_dir(self.root)
        if self.tests_dir is None:
            raise FileNotFoundError(f"{root}: no test kit here (expected testkit/tests/<id>/ folders)")
        self._cache: dict[str, TestCase] = {}

    @staticmethod
    def _find_tests_dir(root: str) -> str | None:
        for candidate in (os.path.join(root, "toolkitx", "testkit", "tests"), os.path.join(root, "testkit", "tests"),
                          os.path.join(root, "tests"), root):
            if os.path.isdir(candidate) and any(
                    os.path.isfile(os.path.join(candidate, d, "index.idx"))
                    or os.path.isfile(os.path.join(candidate, d, "testplan.xml"))
                    for d in _listdir(candidate)):
                return candidate
        return None

    @property
    def source_id(self) -> str:
        """The toolkit writes this into every SubmissionSet.sourceId it sends."""
        for base in (self.root, os.path.dirname(self.tests_dir), os.path.dirname(os.path.dirname(self.tests_dir))):
            path = os.path.join(base, "xdstest", "sourceid.txt")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as fh:
                    value = fh.read().strip()
                if value:
                    return value
        return DEFAULT_SOURCE_ID

    def test_ids(self) -> list[str]:
        return sorted(d for d in _listdir(self.tests_dir) if os.path.isdir(os.path.join(self.tests_dir, d)))

    def has(self, test_id: str) -> bool:
        return os.path.isdir(os.path.join(self.tests_dir, test_id))

    def test(self, test_id: str) -> TestCase:
        if test_id not in self._cache:
            self._cache[test_id] = load_test(os.path.join(self.tests_dir, test_id))
        return self._cache[test_id]

    def collection(self, tag: str) -> list[str]:
        return [t for t in self.test_ids() if tag in self.test(t).collections]

    def collections(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self.test_ids():
            for tag in self.test(t).collections:
                out.setdefault(tag, []).append(t)
        return out


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [line.strip() for line in fh if line.strip() and not line.strip().startswith("#")]


def load_test(path: str) -> TestCase:
    test_id = os.path.basename(os.path.normpath(path))
    readme = _read_lines(os.path.join(path, "readme.txt"))
    tags = []
    for line in _read_lines(os.path.join(path, "collections.txt")):
        tags.extend(line.split())
    case = TestCase(test_id, path, readme[0] if readme else "", tags)
    index = os.path.join(path, "index.idx")
    if os.path.isfile(index):
        for name in _read_lines(index):
            sdir = os.path.join(path, name)
            case.sections.append(Section(name, sdir, os.path.isfile(os.path.join(sdir, "testplan.xml"))))
    elif os.path.isfile(os.path.join(path, "testplan.xml")):
        # Without index.idx the test folder itself is the single section; its logs live under the test id.
        case.sections.append(Section("", path))
    return case
