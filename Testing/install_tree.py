"""The folder a built extension installs its scripted modules into, built from the modules' CMakeLists.txt alone.

``slicerMacroBuildScriptedModule(NAME ... SCRIPTS ... RESOURCES ...)`` (Slicer's
``CMake/SlicerMacroBuildScriptedModule.cmake``) hands SCRIPTS and RESOURCES to CTK's
``ctkMacroCompilePythonScript`` with ``DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}``
and, unless ``WITH_SUBDIR`` is given, ``NO_INSTALL_SUBDIR``: each listed file is copied to
``lib/Slicer-X.Y/qt-scripted-modules/<its path relative to the module folder>`` and that folder is installed as
it is. A script without a ``.py`` ending gets one; a listed file that does not exist stops the configuration.
Nothing else of the module folder is installed, so a file the code reads but the CMakeLists does not list is
missing in a built extension, while running from the source tree hides it.

This module evaluates the few CMake commands the modules' CMakeLists.txt use (``set``, ``file(GLOB ...)``,
``list(SORT|APPEND ...)``, ``slicerMacroBuildScriptedModule``; ``${VAR}`` references, comments, quotes) and
copies exactly those files. Anything it does not understand inside an argument it needs (an undefined
variable, an absolute path, a generator expression) is an error, not a guess.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = ("DSCPerfusion", "GliomaProgression", "CTVPlanner")
SLICER_VERSION = "5.12"
SCRIPTED_MODULES_DIR = f"lib/Slicer-{SLICER_VERSION}/qt-scripted-modules"


class CMakeListsError(ValueError):
    """A module's CMakeLists.txt that this evaluator (or CMake itself) would reject."""


@dataclass
class ScriptedModule:
    name: str
    source_dir: Path
    scripts: list[str]
    resources: list[str]
    with_subdir: bool = False

    def installed_files(self) -> list[str]:
        """Paths relative to the qt-scripted-modules folder, in the order CMake lists them."""
        prefix = f"{self.source_dir.name}/" if self.with_subdir else ""
        scripts = [s if Path(s).suffix == ".py" else f"{s}.py" for s in self.scripts]
        return [prefix + path for path in scripts + self.resources]


# --- a small CMake reader ----------------------------------------------------------------------------------------

_COMMAND = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_VARIABLE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def _strip_comments(text: str) -> str:
    lines = []
    for line in text.splitlines():
        out, quoted = [], False
        for char in line:
            if char == '"':
                quoted = not quoted
            elif char == "#" and not quoted:
                break
            out.append(char)
        lines.append("".join(out))
    return "\n".join(lines)


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """(command name, raw arguments) in order; arguments split on whitespace, quotes kept as one argument."""
    text = _strip_comments(text)
    commands, position = [], 0
    while (match := _COMMAND.search(text, position)) is not None:
        depth, index = 1, match.end()
        while depth and index < len(text):
            depth += {"(": 1, ")": -1}.get(text[index], 0)
            index += 1
        if depth:
            raise CMakeListsError(f"unbalanced parentheses after {match.group(1)}(")
        body = text[match.end():index - 1]
        commands.append((match.group(1), re.findall(r'"[^"]*"|[^\s"]+', body)))
        position = index
    return commands


def _expand(argument: str, variables: dict[str, list[str]], where: str) -> list[str]:
    if "$<" in argument:
        raise CMakeListsError(f"{where}: generator expression {argument!r} is not evaluated here")

    def value(match):
        name = match.group(1)
        if name not in variables:
            raise CMakeListsError(f"{where}: ${{{name}}} is not defined")
        return ";".join(variables[name])

    quoted = argument.startswith('"') and argument.endswith('"')
    expanded = _VARIABLE.sub(value, argument[1:-1] if quoted else argument)
    if quoted:
        return [expanded]
    return [item for item in expanded.split(";") if item]


def _glob(patterns: list[str], relative: Path | None, where: str) -> list[str]:
    found = []
    for pattern in patterns:
        path = Path(pattern)
        if not path.is_absolute():
            raise CMakeListsError(f"{where}: relative GLOB pattern {pattern!r} (the modules use absolute ones)")
        if any(char in part for part in path.parent.parts for char in "*?["):
            raise CMakeListsError(f"{where}: wildcard in a folder name is not supported: {pattern!r}")
        if path.parent.is_dir():
            found += [p for p in sorted(path.parent.iterdir())
                      if p.is_file() and fnmatch.fnmatchcase(p.name, path.name)]
    if relative is None:
        return [p.as_posix() for p in found]
    return [p.relative_to(relative).as_posix() for p in found]


def read_module(cmake_text: str, source_dir: Path) -> ScriptedModule:
    """Evaluates one module's CMakeLists.txt text as if it were in ``source_dir``; the module it builds."""
    source_dir = Path(source_dir).resolve()
    where = f"{source_dir.name}/CMakeLists.txt"
    variables: dict[str, list[str]] = {"CMAKE_CURRENT_SOURCE_DIR": [source_dir.as_posix()]}
    built = None
    for name, raw in _commands(cmake_text):
        command = name.lower()
        if command == "set":
            if raw and raw[-1] == "PARENT_SCOPE" or "CACHE" in raw:
                raise CMakeListsError(f"{where}: set({raw[0]} ... CACHE/PARENT_SCOPE) is not evaluated here")
            variables[raw[0]] = [item for argument in raw[1:] for item in _expand(argument, variables, where)]
        elif command == "list" and raw and raw[0] in ("SORT", "APPEND"):
            target = raw[1]
            if raw[0] == "SORT":
                variables[target] = sorted(variables.get(target, []))
            else:
                variables[target] = variables.get(target, []) + [
                    item for argument in raw[2:] for item in _expand(argument, variables, where)]
        elif command == "file" and raw and raw[0] in ("GLOB", "GLOB_RECURSE"):
            if raw[0] == "GLOB_RECURSE":
                raise CMakeListsError(f"{where}: file(GLOB_RECURSE ...) is not evaluated here")
            arguments = [item for argument in raw[2:] for item in _expand(argument, variables, where)]
            relative = None
            if "RELATIVE" in arguments:
                index = arguments.index("RELATIVE")
                relative = Path(arguments[index + 1])
                del arguments[index:index + 2]
            patterns = [a for a in arguments if a not in ("CONFIGURE_DEPENDS", "LIST_DIRECTORIES", "true", "false")]
            variables[raw[1]] = _glob(patterns, relative, where)
        elif command == "slicermacrobuildscriptedmodule":
            built = _scripted_module([item for argument in raw for item in _expand(argument, variables, where)],
                                     source_dir, where)
    if built is None:
        raise CMakeListsError(f"{where}: no slicerMacroBuildScriptedModule(...)")
    return built


def _scripted_module(arguments: list[str], source_dir: Path, where: str) -> ScriptedModule:
    options = {"WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"}
    values: dict[str, list[str]] = {"NAME": [], "SCRIPTS": [], "RESOURCES": []}
    present, current = set(), None
    for argument in arguments:
        if argument in options:
            present.add(argument)
            current = None
        elif argument in values:
            current = argument
        elif current is None:
            raise CMakeListsError(f"{where}: unknown keyword {argument!r} given to slicerMacroBuildScriptedModule()")
        else:
            values[current].append(argument)
    if len(values["NAME"]) != 1:
        raise CMakeListsError(f"{where}: NAME is mandatory")
    for kind in ("SCRIPTS", "RESOURCES"):
        for value in values[kind]:
            if Path(value).is_absolute():
                raise CMakeListsError(f"{where}: absolute {kind} path {value!r} (list paths relative to the module)")
            path = source_dir / value
            if path.is_dir():
                # ctkMacroCompilePythonScript copies each entry with 'cmake -E copy', which copies files only.
                raise CMakeListsError(f"{where}: {kind} entry '{value}' is a folder; list the files in it")
            if not path.exists() and not path.with_name(path.name + ".py").exists():
                # What CMake says too, at configure time.
                raise CMakeListsError(f"{where}: slicerMacroBuildScriptedModule({kind}) given nonexistent file "
                                      f"or directory '{value}'")
    return ScriptedModule(values["NAME"][0], source_dir, values["SCRIPTS"], values["RESOURCES"],
                          "WITH_SUBDIR" in present)


# --- the install tree ----------------------------------------------------------------------------------------------


def module_from_repo(module: str, cmake_text: str | None = None) -> ScriptedModule:
    source_dir = REPO / module
    text = cmake_text if cmake_text is not None else (source_dir / "CMakeLists.txt").read_text(encoding="utf-8")
    return read_module(text, source_dir)


def install(modules: list[ScriptedModule], prefix: Path) -> Path:
    """Copies each module's listed files as the build and install would; returns the qt-scripted-modules folder."""
    destination = Path(prefix) / SCRIPTED_MODULES_DIR
    for module in modules:
        scripts = [s if Path(s).suffix == ".py" else f"{s}.py" for s in module.scripts]
        for relative, installed in zip(scripts + module.resources, module.installed_files()):
            source = module.source_dir / relative
            target = destination / installed
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def build_install_tree(prefix: Path, cmake_texts: dict[str, str] | None = None) -> Path:
    """The qt-scripted-modules folder of all three modules under ``prefix``; ``cmake_texts`` replaces a module's
    CMakeLists.txt text (to show what a changed list would install)."""
    cmake_texts = cmake_texts or {}
    return install([module_from_repo(m, cmake_texts.get(m)) for m in MODULES], prefix)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python Testing/install_tree.py PREFIX   (copies what a built extension would install)")
    folder = build_install_tree(Path(sys.argv[1]))
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        print(path.relative_to(sys.argv[1]))
