"""What a dashboard shows: the period and the filters, read from the URL so a view can be shared.

    ?days=N                     the last N days up to now (1 to MAX_DAYS)
    ?start=YYYY-MM-DD&end=...   whole days in the org's time zone, both included
    ?feature= &model= &key= &user=   narrow every panel (key and user are ids)

Nothing is ignored: a value that cannot be read is an error the page shows
(never a silent fall back to the default period). Django forms do the
parsing and the messages.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from django import forms
from django.utils import timezone

PRESETS = (7, 30, 90)
DEFAULT_DAYS = 30
# A year and a day: a leap year's whole year; longer ranges belong to the usage API.
MAX_DAYS = 366


class DashboardQuery(forms.Form):
    days = forms.IntegerField(required=False, min_value=1, max_value=MAX_DAYS)
    start = forms.DateField(required=False, input_formats=["%Y-%m-%d"])
    end = forms.DateField(required=False, input_formats=["%Y-%m-%d"])
    feature = forms.CharField(required=False, max_length=100)
    model = forms.CharField(required=False, max_length=100)
    key = forms.IntegerField(required=False, min_value=1)
    user = forms.IntegerField(required=False, min_value=1)

    def clean(self):
        data = super().clean()
        start, end, days = data.get("start"), data.get("end"), data.get("days")
        if self.errors:
            return data
        if (start is None) != (end is None):
            raise forms.ValidationError("Give both start and end dates (YYYY-MM-DD), or neither.")
        if start is not None:
            if days is not None:
                raise forms.ValidationError("Give either days or start and end, not both.")
            if end < start:
                raise forms.ValidationError("The end date is before the start date.")
            if (end - start).days + 1 > MAX_DAYS:
                raise forms.ValidationError(f"A range covers at most {MAX_DAYS} days.")
        return data


@dataclass(frozen=True)
class DashboardView:
    """The period [start, end) and the narrowing filters; `errors` when the URL could not be read."""

    start: datetime
    end: datetime
    tz: str
    days: int | None  # set for a "last N days" view, None for a custom range
    first_day: object  # local dates of the first and last day shown
    last_day: object
    narrow: dict = field(default_factory=dict)  # queries' NARROWING keywords
    params: dict = field(default_factory=dict)  # the URL parameters as given (for links and the form)
    errors: list[str] = field(default_factory=list)

    @property
    def custom(self) -> bool:
        return self.days is None

    @property
    def preset_links(self) -> list[tuple[int, str]]:
        """(days, query string) for each preset, keeping the filters and dropping a custom range."""
        return [(days, self.query_string(days=days, start=None, end=None)) for days in PRESETS]

    @property
    def label(self) -> str:
        """The period in words, with the time zone its days are in."""
        if self.custom:
            return f"{self.first_day:%b %-d, %Y} to {self.last_day:%b %-d, %Y} (whole days, {self.tz})"
        return f"last {self.days} days to now (days in {self.tz})"

    def query_string(self, **changes) -> str:
        from django.utils.http import urlencode

        params = {k: v for k, v in {**self.params, **changes}.items() if v not in (None, "")}
        return urlencode(params)


def _messages(form: forms.Form) -> list[str]:
    messages = []
    for name, errors in form.errors.items():
        for error in errors:
            messages.append(error if name == "__all__" else f"{name}: {error} (you gave {form.data.get(name)!r})")
    return messages


def read_view(get, tz: str, now: datetime | None = None) -> DashboardView:
    """The dashboard view the query string `get` asks for, in time zone `tz`."""
    now = now or timezone.now()
    zone = zoneinfo.ZoneInfo(tz)
    given = {k: get.get(k, "").strip() for k in DashboardQuery.base_fields if get.get(k, "").strip()}
    form = DashboardQuery(given)
    valid = form.is_valid()
    data = form.cleaned_data if valid else {}
    if valid and data.get("start"):
        # Whole local days: midnight of the first day to midnight after the last (DST-aware).
        start = datetime.combine(data["start"], time(), tzinfo=zone)
        end = datetime.combine(data["end"] + timedelta(days=1), time(), tzinfo=zone)
        days = None
    else:
        days = data.get("days") or DEFAULT_DAYS
        end = now
        start = end - timedelta(days=days)
    narrow = {"feature": data.get("feature") or None, "model": data.get("model") or None,
              "api_key_id": data.get("key"), "user_id": data.get("user")}
    return DashboardView(
        start=start, end=end, tz=tz, days=days,
        first_day=timezone.localtime(start, zone).date(),
        last_day=timezone.localtime(end - timedelta(microseconds=1), zone).date(),
        narrow={k: v for k, v in narrow.items() if v is not None},
        params=given, errors=[] if valid else _messages(form),
    )


class MonthQuery(forms.Form):
    month = forms.RegexField(r"^\d{4}-(0[1-9]|1[0-2])$", required=False,
                             error_messages={"invalid": "Give a month as YYYY-MM, for example 2026-11."})


@dataclass(frozen=True)
class MonthView:
    """A calendar month in the org's time zone: [start, end) from local midnight on the 1st."""

    month: str
    start: datetime
    end: datetime
    tz: str
    errors: list[str] = field(default_factory=list)

    @property
    def previous(self) -> str:
        year, month = map(int, self.month.split("-"))
        return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"

    @property
    def next(self) -> str:
        year, month = map(int, self.month.split("-"))
        return f"{year + 1}-01" if month == 12 else f"{year}-{month + 1:02d}"


def read_month(get, tz: str, now: datetime | None = None) -> MonthView:
    """The month `?month=YYYY-MM` asks for (default: this month in `tz`)."""
    zone = zoneinfo.ZoneInfo(tz)
    local_now = timezone.localtime(now or timezone.now(), zone)
    form = MonthQuery({"month": get.get("month", "").strip()})
    valid = form.is_valid()
    month = (form.cleaned_data.get("month") if valid else "") or f"{local_now:%Y-%m}"
    year, number = map(int, month.split("-"))
    start = datetime(year, number, 1, tzinfo=zone)
    end = datetime(year + (number == 12), number % 12 + 1, 1, tzinfo=zone)
    return MonthView(month=month, start=start, end=end, tz=tz, errors=[] if valid else _messages(form))
