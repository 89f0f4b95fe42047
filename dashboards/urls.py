from django.urls import path

from . import views

app_name = "dashboards"

urlpatterns = [
    path("", views.index, name="index"),
    # Two segments, so no organization slug can shadow it (org pages are one segment).
    path("staff/overview/", views.staff_overview, name="staff-overview"),
    path("staff/statements/", views.staff_statements, name="staff-statements"),
    path("staff/gpu/", views.staff_gpu, name="staff-gpu"),
    path("staff/capacity/", views.staff_capacity, name="staff-capacity"),
    path("<slug:org_slug>/", views.org_dashboard, name="org"),
    path("<slug:org_slug>/statement/", views.org_statement, name="statement"),
    path("<slug:org_slug>/requests/", views.request_log, name="requests"),
    path("<slug:org_slug>/retries/", views.retries, name="retries"),
    path("<slug:org_slug>/savings/", views.savings, name="savings"),
    path("<slug:org_slug>/budgets/", views.budgets, name="budgets"),
    path("<slug:org_slug>/by/<str:dimension>/", views.breakdown, name="breakdown"),
    path("<slug:org_slug>/requests/<str:request_id>/", views.request_detail, name="request"),
]
