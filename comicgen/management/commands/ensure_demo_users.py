"""Create (or keep) the dev stack's users and print how to log in."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the author `demo`/`demo` and the staff user `admin`/`admin`; print tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000")

    def handle(self, *args: Any, url: str, **options: Any) -> None:
        User = get_user_model()
        demo = self._ensure(User, "demo", staff=False)
        admin = self._ensure(User, "admin", staff=True)
        demo_token, _ = Token.objects.get_or_create(user=demo)
        Token.objects.get_or_create(user=admin)
        self.stdout.write(
            "\n"
            f"  comicgen is starting at {url}/\n"
            f"  Log in as demo / demo (an author); staff admin at {url}/admin/ as admin / admin.\n"
            f"  API token for demo: {demo_token.key}\n"
            f"  Try: curl -H 'Authorization: Token {demo_token.key}' {url}/api/v1/health/\n"
            f"  API schema: {url}/api/v1/docs/\n"
        )

    def _ensure(self, User: Any, username: str, *, staff: bool) -> Any:
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_user(username=username, password=username)
            user.is_staff = user.is_superuser = staff
            user.save(update_fields=["is_staff", "is_superuser"])
        return user
