from django.urls import path

from . import views

app_name = "dashboards"

urlpatterns = [
    path("", views.index, name="index"),
    # Two segments, so no organization slug can shadow it (org pages are one segment).
    path("staff/overview/", views.staff_overview, name="staff-overview"),
    path("<slug:org_slug>/", views.org_dashboard, name="org"),
]
