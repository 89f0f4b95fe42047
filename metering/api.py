"""The usage API: `/api/usage/` (grouped sums) and `/api/usage/events/` (raw drill-down).

Thin DRF views: validate the query string, resolve which orgs the caller may
read (the dashboards' rule: managers their orgs, staff all), call
`metering.queries`, page and render. JSON or CSV (`?format=csv`, every row).
"""

from __future__ import annotations

import csv
import io
import zoneinfo
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.http import Http404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import IsAdminUser
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.models import Membership, Organization
from tenants.services import can_view_organization, organizations_managed_by

from . import queries
from .models import PoolRate
from .pool_statements import month_period, pool_statement_report

MONEY = {"max_digits": 38, "decimal_places": 9}


class CsvRenderer(BaseRenderer):
    """Rows as CSV with a header; money as exact decimal strings."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        rows = data.get("results", data) if isinstance(data, dict) else data
        if isinstance(rows, dict):  # an error body
            rows = [rows]
        # No rows still gets the header line: an empty body would also lose its Content-Type (DRF drops it).
        view = (renderer_context or {}).get("view")
        fieldnames = list(rows[0].keys()) if rows else getattr(view, "csv_header", [])
        buffer = io.StringIO()
        if fieldnames:
            writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return buffer.getvalue().encode()


# What the rollups' DateTime columns can hold (1970 to 2106): ClickHouse cannot even parse a time outside it.
EARLIEST = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)
LATEST = datetime(2106, 1, 1, tzinfo=dt_timezone.utc)


def _within_stored_range(value: datetime) -> datetime:
    if not EARLIEST <= value <= LATEST:
        raise serializers.ValidationError(
            f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC), the range usage is stored for.")
    return value


class UsageQuery(serializers.Serializer):
    start = serializers.DateTimeField(required=False, help_text="Inclusive, ISO 8601 (default: 30 days ago).")
    end = serializers.DateTimeField(required=False, help_text="Exclusive, ISO 8601 (default: now).")
    org = serializers.SlugField(required=False, help_text="Organization slug.")
    feature = serializers.CharField(required=False)
    model = serializers.CharField(required=False, help_text="Model served.")
    pool = serializers.CharField(required=False)
    key = serializers.IntegerField(required=False, min_value=1, help_text="API key id.")
    user = serializers.IntegerField(required=False, min_value=1, help_text="User id.")
    tz = serializers.CharField(required=False, default="UTC", help_text="Time zone for group_by=day.")

    def validate_start(self, value: datetime) -> datetime:
        return _within_stored_range(value)

    def validate_end(self, value: datetime) -> datetime:
        return _within_stored_range(value)

    def validate_tz(self, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise serializers.ValidationError(f"{value!r} is not a known time zone")
        return value

    def validate(self, attrs):
        now = timezone.now()
        attrs.setdefault("end", now)
        attrs.setdefault("start", attrs["end"] - timedelta(days=30))
        if attrs["start"] >= attrs["end"]:
            raise serializers.ValidationError({"start": "start must be before end."})
        return attrs


class GroupedUsageQuery(UsageQuery):
    group_by = serializers.CharField(
        required=False, default="", allow_blank=True,
        help_text=f"Comma-separated: {', '.join(queries.DIMENSIONS)}. Empty: one row of totals.",
    )

    def validate_group_by(self, value: str) -> list[str]:
        dims = [d.strip() for d in value.split(",") if d.strip()]
        unknown = [d for d in dims if d not in queries.DIMENSIONS]
        if unknown:
            raise serializers.ValidationError(f"unknown dimension(s): {', '.join(unknown)}")
        if len(set(dims)) != len(dims):
            raise serializers.ValidationError("a dimension is repeated")
        return dims


class UsageGroup(serializers.Serializer):
    org = serializers.IntegerField(required=False, help_text="Organization id (group_by=org).")
    feature = serializers.CharField(required=False)
    model = serializers.CharField(required=False)
    model_requested = serializers.CharField(required=False)
    pool = serializers.CharField(required=False)
    hour = serializers.DateTimeField(required=False)
    day = serializers.DateField(required=False)
    key = serializers.IntegerField(required=False, help_text="API key id (0: none).")
    user = serializers.IntegerField(required=False, help_text="User id (0: none).")
    cache_layer = serializers.CharField(required=False, help_text="exact, semantic, embedding; blank: generated.")
    requests = serializers.IntegerField()
    refused = serializers.IntegerField()
    errors = serializers.IntegerField()
    cache_hits = serializers.IntegerField()
    cache_hit_rate = serializers.FloatField(allow_null=True, help_text="cache_hits / requests.")
    input_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    tokens_saved = serializers.IntegerField()
    engine_seconds = serializers.FloatField()
    cost_input = serializers.DecimalField(**MONEY)
    cost_output = serializers.DecimalField(**MONEY)
    cost_gpu = serializers.DecimalField(**MONEY)
    cost_total = serializers.DecimalField(**MONEY, help_text="Billed, in each org's chargeback mode.")
    cost_base = serializers.DecimalField(**MONEY)
    cost_retry = serializers.DecimalField(**MONEY, help_text="Failed attempts (not billed).")
    cost_escalation = serializers.DecimalField(**MONEY, help_text="Answers thrown away for a stronger model's.")
    savings_cache = serializers.DecimalField(**MONEY, help_text="Counterfactual: what cache hits would have cost.")
    savings_tokens = serializers.DecimalField(**MONEY, help_text="Counterfactual: tokens removed by optimization.")

    def to_representation(self, instance):
        if "cache_hits" in instance and "requests" in instance:
            instance = {**instance, "cache_hit_rate": instance["cache_hits"] / instance["requests"]
                        if instance["requests"] else None}
        data = super().to_representation(instance)
        return {k: v for k, v in data.items() if k in instance}


class UsageEvent(serializers.Serializer):
    event_id = serializers.UUIDField()
    request_id = serializers.CharField()
    trace_id = serializers.CharField()
    timestamp = serializers.DateTimeField()
    org_id = serializers.IntegerField()
    org_slug = serializers.CharField()
    feature = serializers.CharField()
    api_key_id = serializers.IntegerField()
    user_id = serializers.IntegerField()
    model_requested = serializers.CharField()
    model_served = serializers.CharField()
    pool = serializers.CharField()
    attempt_kind = serializers.CharField()
    status = serializers.CharField()
    input_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    tokens_saved = serializers.IntegerField()
    engine_seconds = serializers.FloatField()
    cost_input = serializers.DecimalField(**MONEY)
    cost_output = serializers.DecimalField(**MONEY)
    cost_gpu = serializers.DecimalField(**MONEY)
    cost_total = serializers.DecimalField(**MONEY)
    chargeback_mode = serializers.CharField()
    cost_base = serializers.DecimalField(**MONEY)
    cost_retry = serializers.DecimalField(**MONEY)
    cost_escalation = serializers.DecimalField(**MONEY)
    savings_cache = serializers.DecimalField(**MONEY)
    savings_tokens = serializers.DecimalField(**MONEY)
    cache_hit = serializers.BooleanField()
    cache_layer = serializers.CharField()
    downgraded = serializers.BooleanField()


class UsagePagination(LimitOffsetPagination):
    default_limit = 100
    max_limit = 1000


class _LazyRows:
    """A sequence DRF's paginator can count and slice; each slice is one ClickHouse query."""

    def __init__(self, count, fetch):
        self._count = count
        self._fetch = fetch

    def count(self) -> int:
        return self._count()

    def __len__(self) -> int:
        return self._count()

    def __getitem__(self, item: slice):
        return self._fetch(limit=item.stop - (item.start or 0), offset=item.start or 0)


def usage_filter(request, params: dict) -> queries.UsageFilter:
    """The caller's filter, narrowed to the orgs they may see. Another org's slug is a 404."""
    user_id = params.get("user")
    if params.get("org"):
        org = Organization.objects.filter(slug=params["org"]).first()
        if org is None:
            raise Http404("No such organization.")
        if not can_view_organization(request.user, org):
            # A member (not a manager) of the org reads their own usage only, as on the dashboards.
            member = Membership.objects.filter(user=request.user, organization=org,
                                               role=Membership.Role.MEMBER).exists()
            if not member or user_id not in (None, request.user.pk):
                raise Http404("No such organization.")
            user_id = request.user.pk
        org_ids = (org.pk,)
    elif request.user.is_staff:
        org_ids = None
    else:
        org_ids = tuple(o.pk for o in organizations_managed_by(request.user))
    return queries.UsageFilter(
        start=params["start"], end=params["end"], org_ids=org_ids, feature=params.get("feature"),
        model=params.get("model"), pool=params.get("pool"), api_key_id=params.get("key"),
        user_id=user_id, tz=params.get("tz") or "UTC",
    )


def csv_filename(kind: str, params: dict, request) -> str:
    """tollgate-usage-acme-20261101-20261201: the org (else "all" for staff, "my-orgs" for a manager) and
    the period's UTC dates, end exclusive."""
    start = params["start"].astimezone(dt_timezone.utc)
    end = params["end"].astimezone(dt_timezone.utc)
    scope = params.get("org") or ("all" if request.user.is_staff else "my-orgs")
    parts = ["tollgate", kind, scope, f"{start:%Y%m%d}", f"{end:%Y%m%d}"]
    # Slugs are [-a-zA-Z0-9_]: safe inside the quoted header value.
    return "-".join(parts)


_FORMAT = OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"],
                           description="csv: every matching row as CSV (no paging).")


class _UsageView(APIView):
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer, CsvRenderer]
    pagination_class = UsagePagination

    def _respond(self, request, rows: _LazyRows, serializer_class, filename: str = "usage",
                 columns: list[str] | None = None):
        if getattr(request, "accepted_renderer", None) and request.accepted_renderer.format == "csv":
            everything = rows[0:rows.count()] if rows.count() else []
            self.csv_header = columns or list(serializer_class().fields)  # for CsvRenderer when there are no rows
            response = Response(serializer_class(everything, many=True).data)
            # A download with a name that says what it holds (browsers otherwise save "usage" or "events").
            response["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
            return response
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)


class UsageSummaryView(_UsageView):
    @extend_schema(parameters=[GroupedUsageQuery, _FORMAT], responses=UsageGroup(many=True),
                   summary="Usage and cost, grouped", tags=["usage"])
    def get(self, request):
        """Sums of requests, tokens and cost components, grouped by `group_by`, largest spend first."""
        query = GroupedUsageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        f = usage_filter(request, params)
        group_by = params["group_by"]
        rows = _LazyRows(lambda: queries.usage_summary_count(f, group_by),
                         lambda limit, offset: queries.usage_summary(f, group_by, limit=limit, offset=offset))
        # A group's columns: its group_by dimensions, then the sums.
        columns = [name for name in UsageGroup().fields if name not in queries.DIMENSIONS or name in group_by]
        return self._respond(request, rows, UsageGroup, csv_filename("usage", params, request), columns)


class UsageEventsView(_UsageView):
    @extend_schema(parameters=[UsageQuery, _FORMAT], responses=UsageEvent(many=True),
                   summary="Raw usage events (drill-down)", tags=["usage"])
    def get(self, request):
        """One row per billable attempt, newest first."""
        query = UsageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        f = usage_filter(request, query.validated_data)
        rows = _LazyRows(lambda: queries.usage_events_count(f),
                         lambda limit, offset: queries.usage_events(f, limit=limit, offset=offset))
        return self._respond(request, rows, UsageEvent, csv_filename("usage-events", query.validated_data, request))


# --- Pool statements (staff only): /api/pools/<pool>/statement/ -------------------------------


class PoolStatementQuery(serializers.Serializer):
    period = serializers.RegexField(r"^\d{4}-\d{2}$", required=False, help_text="A UTC month, YYYY-MM.")
    start = serializers.DateTimeField(required=False, help_text="Inclusive, ISO 8601 (instead of period).")
    end = serializers.DateTimeField(required=False, help_text="Exclusive, ISO 8601 (instead of period).")

    def validate(self, attrs):
        if attrs.get("period"):
            if "start" in attrs or "end" in attrs:
                raise serializers.ValidationError("give either period or start and end, not both.")
            try:
                attrs["start"], attrs["end"] = month_period(attrs["period"])
            except ValueError as exc:
                raise serializers.ValidationError({"period": str(exc)})
        elif "start" not in attrs or "end" not in attrs:
            raise serializers.ValidationError("give period (YYYY-MM) or both start and end.")
        if attrs["start"] >= attrs["end"]:
            raise serializers.ValidationError({"start": "start must be before end."})
        return attrs


class PoolStatementLine(serializers.Serializer):
    org_id = serializers.IntegerField()
    org = serializers.CharField(source="org_slug")
    org_name = serializers.CharField()
    mode = serializers.CharField(help_text="The org's chargeback mode; only gpu_shared orgs carry an idle share.")
    used = serializers.DecimalField(**MONEY, help_text="The org's own GPU cost (failed attempts included).")
    idle_share = serializers.DecimalField(**MONEY)
    charge = serializers.DecimalField(**MONEY, help_text="used + idle_share.")


class PoolStatementBody(serializers.Serializer):
    pool = serializers.CharField(source="statement.pool")
    start = serializers.DateTimeField(source="statement.start")
    end = serializers.DateTimeField(source="statement.end")
    total = serializers.DecimalField(**MONEY, source="statement.total",
                                     help_text="$/GPU-hour × GPUs × hours, piecewise over rate changes.")
    used = serializers.DecimalField(**MONEY, source="statement.used")
    idle = serializers.DecimalField(**MONEY, source="statement.idle")
    lines = PoolStatementLine(many=True)
    platform_overhead = serializers.DecimalField(
        **MONEY, source="statement.platform_overhead", help_text="total − sum(lines.charge), exactly.")
    engine_seconds = serializers.FloatField()
    replica_seconds = serializers.DecimalField(max_digits=38, decimal_places=3, allow_null=True,
                                               help_text="Capacity paid for: GPUs ÷ GPUs per replica × seconds.")
    utilization = serializers.FloatField(allow_null=True, help_text="engine_seconds ÷ replica_seconds.")


class PoolStatementView(APIView):
    permission_classes = [IsAdminUser]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]

    @extend_schema(parameters=[PoolStatementQuery], responses=PoolStatementBody,
                   summary="A GPU pool's cost over a period and who pays it", tags=["pools"])
    def get(self, request, pool: str):
        """Per-org charges (own GPU time plus any idle share) and platform overhead; they add up to total."""
        query = PoolStatementQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        if not PoolRate.objects.filter(pool=pool).exists():
            raise Http404("No such pool.")
        report = pool_statement_report(pool, query.validated_data["start"], query.validated_data["end"])
        return Response(PoolStatementBody(report).data)
