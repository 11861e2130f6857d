from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import URLPattern, URLResolver, include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from comicgen.api_tokens import ObtainTokenView, api_token_page
from comicgen.docs import RedocView, SwaggerView
from comicgen.errors import ApiNotFoundView
from comicgen.login_throttle import throttle_login_posts
from comicgen.views import HealthView

api_v1: list[URLPattern | URLResolver] = [
    path("health/", HealthView.as_view(), name="health"),
    path("auth/token/", ObtainTokenView.as_view(), name="api-auth-token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("redoc/", RedocView.as_view(url_name="schema"), name="api-redoc"),
    path("", include("budgets.api.urls")),
    path("", include("batches.api.urls")),
    # Last: whatever no route above matches answers the API's JSON 404, not an HTML page.
    re_path(r"^.*$", ApiNotFoundView.as_view(), name="api-not-found"),
]

urlpatterns = [
    # Before admin.site.urls, so the admin's own login form is reached through the throttle.
    path("admin/login/", throttle_login_posts(admin.site.login)),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("accounts/login/", throttle_login_posts(auth_views.LoginView.as_view()), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("monitoring.urls")),
    path("account/api-token/", api_token_page, name="api-token"),
    path("", include("batches.urls")),
]

# No route serves MEDIA_ROOT: panels are private, served one by one after an access check
# (batches.panels, /panels/<id>.png).
