from __future__ import annotations

from django.apps import AppConfig


class ComicgenConfig(AppConfig):
    name = "comicgen"
    verbose_name = "comicgen"
