from django.urls import path

from . import views

app_name = "budgets"

urlpatterns = [
    path("<slug:org_slug>/alerts/<int:alert_id>/acknowledge/", views.acknowledge_alert, name="acknowledge-alert"),
]
