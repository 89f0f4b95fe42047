from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from metering import api as metering_api
from metering import views as metering_views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="dashboards:index", permanent=False)),
    path("dashboards/", include("dashboards.urls")),
    path("budgets/", include("budgets.urls")),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/usage/", include("metering.urls")),
    path("api/cache/", include("caching.urls")),
    path("api/pools/<str:pool>/statement/", metering_api.PoolStatementView.as_view(), name="pool-statement"),
    path("metrics", metering_views.metrics, name="metrics"),
]

admin.site.site_header = "Tollgate administration"
admin.site.site_title = "Tollgate admin"
admin.site.index_title = "Tenants, budgets, catalog and usage"
