"""The compiler as a pure function: values text in, manifests out."""

from __future__ import annotations

import dataclasses

from kube_sts.compiler import diagnostics, emit, render, source

__all__ = ["Manifest", "compile_values"]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The rendered objects as ``(file name, YAML document)`` pairs in apply order."""

    files: tuple[tuple[str, str], ...]
    warnings: tuple[diagnostics.Diagnostic, ...] = ()
    """Positioned warnings (the CLI prints them to stderr; the output is still valid)."""
    notes: tuple[diagnostics.Diagnostic, ...] = ()
    """Informational lines: the OpenUnison settings that were ignored (the CLI prints them to stderr)."""

    @property
    def text(self) -> str:
        """The stream for ``kubectl apply -f -``."""
        return emit.stream([document for _, document in self.files])

    def kustomization(self) -> str:
        """A kustomization.yaml listing every file in apply order."""
        names = "".join(f"- {name}\n" for name, _ in self.files)
        return f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{names}"


def compile_values(text: str) -> Manifest:
    """Validate and render ``text``; raises ``diagnostics.ValuesError`` on any problem."""
    checked = source.check(text)
    objects = render.objects(checked.model)
    files = tuple((emit.file_name(i, obj), emit.document(obj)) for i, obj in enumerate(objects))
    return Manifest(files, checked.warnings, checked.notes)
