from django import forms
from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from core.admin_money import MoneyInput, money_column
from core.money import format_usd
from tenants import admin as tenants_admin
from tenants.models import Organization

from . import alerts, services
from .models import Alert, AlertDelivery, Budget, parse_thresholds

# The alert percentages offered as checkboxes; a budget's own other values are offered too.
COMMON_THRESHOLDS = (25, 50, 75, 80, 90, 100, 110, 125, 150, 200)


class ThresholdsField(forms.TypedMultipleChoiceField):
    """Budget.thresholds ("50,80,100") as checkboxes: no free text to mistype."""

    widget = forms.CheckboxSelectMultiple
    NONE_CHOSEN = "Choose at least one percentage that raises an alert."

    def __init__(self, *args, **kwargs):
        kwargs.pop("max_length", None)
        kwargs.pop("empty_value", None)
        kwargs.setdefault("error_messages", {"required": self.NONE_CHOSEN})
        super().__init__(*args, coerce=int, choices=self.choices_for(), **kwargs)

    @staticmethod
    def choices_for(extra=()) -> list[tuple[int, str]]:
        return [(p, f"{p}%") for p in sorted(set(COMMON_THRESHOLDS) | set(extra))]

    def prepare_value(self, value):
        if isinstance(value, str):
            try:
                return parse_thresholds(value)
            except ValueError:
                return []
        return value

    def clean(self, value):
        chosen = super().clean(value)
        if not chosen:
            raise forms.ValidationError(self.NONE_CHOSEN)
        return ",".join(str(p) for p in sorted(set(chosen)))


class BudgetForm(forms.ModelForm):
    thresholds = ThresholdsField(
        label="Alert at", help_text="Percentages of the amount that raise an alert (email and webhook).")

    class Meta:
        model = Budget
        fields = "__all__"
        widgets = {"amount": MoneyInput()}
        labels = {"amount": "Amount (USD per period)"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.thresholds:
            try:
                own = parse_thresholds(self.instance.thresholds)
            except ValueError:
                own = []
            self.fields["thresholds"].choices = ThresholdsField.choices_for(own)


class BudgetStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "enforced"), ("paused", "paused"), ("over", "used up this period")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(is_active=True)
        if self.value() == "paused":
            return queryset.filter(is_active=False)
        if self.value() == "over":
            now = timezone.now()
            over = [b.pk for b in queryset.select_related("organization", "feature", "api_key", "user")
                    if (s := services.budget_status(b, now)) is not None and s.exhausted]
            return queryset.filter(pk__in=over)
        return queryset


def _money(amount) -> str:
    """As the dashboards show money: rounded to the amount's scale."""
    return format_usd(amount, rounded=True)


class BudgetStatusColumns:
    """Spend, share used and forecast of the current period, computed once per row."""

    def _status(self, obj):
        cache = getattr(self, "_status_cache", None)
        if cache is None:
            cache = self._status_cache = {}
        if obj.pk not in cache:
            cache[obj.pk] = services.budget_status(obj, timezone.now())
        return cache[obj.pk]

    @admin.display(description="spent this period")
    def spent_this_period(self, obj):
        status = self._status(obj)
        return "—" if status is None else _money(status.spent)

    @admin.display(description="used")
    def used(self, obj):
        status = self._status(obj)
        if status is None:
            return "not in force"
        pct = status.fraction_used * 100
        colour = "#b00" if pct >= 100 else "#b60" if pct >= 80 else "#080"
        return format_html('<span style="color:{}">{}%</span>', colour, f"{pct:.0f}")

    @admin.display(description="forecast")
    def forecast(self, obj):
        status = self._status(obj)
        if status is None or status.forecast is None:
            return "—"
        colour = "#b00" if status.forecast > status.amount else "inherit"
        return format_html('<span style="color:{}">{}</span>', colour, _money(status.forecast))

    @admin.display(description="state")
    def state(self, obj):
        status = self._status(obj)
        return "not in force" if status is None else status.state


@admin.register(Budget)
class BudgetAdmin(BudgetStatusColumns, admin.ModelAdmin):
    list_display = ["scope", "period", "budget_amount", "action", "spent_this_period", "used", "forecast", "state",
                    "is_active"]
    list_filter = ["organization", BudgetStateFilter, "period", "action"]
    autocomplete_fields = ["organization", "api_key", "user"]
    list_select_related = ["organization", "feature", "api_key", "user"]
    form = BudgetForm
    readonly_fields = ["spent_this_period", "used", "forecast", "state", "reset_at", "created_at"]
    actions = ["reset_selected", "pause_selected", "resume_selected"]
    fieldsets = [
        (None, {"fields": ["organization", "amount", "period", "starts_at", "ends_at", "is_active"]}),
        ("This period", {"fields": ["spent_this_period", "used", "forecast", "state"]}),
        ("Scope (at most one; none covers the whole organization)", {"fields": ["feature", "api_key", "user"]}),
        ("When it is used up", {"fields": ["action", "downgrade_at_percent", "downgrade_max_tokens", "thresholds"]}),
        ("History", {"fields": ["reset_at", "created_at"]}),
    ]

    def get_fieldsets(self, request, obj=None):
        if obj is None:  # a new budget has spent nothing yet
            return [fs for fs in self.fieldsets if fs[0] != "This period"]
        return self.fieldsets

    def changelist_view(self, request, extra_context=None):
        self._status_cache = {}
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self._status_cache = {}  # this request's spend, not the one an earlier page read
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="scope")
    def scope(self, obj):
        return obj.scope_label

    @admin.display(description="amount", ordering="amount")
    def budget_amount(self, obj):
        return _money(obj.amount)

    @admin.action(description="Reset selected budgets (this period counts from now)")
    def reset_selected(self, request, queryset):
        count = services.reset_budgets(queryset.values_list("pk", flat=True))
        self.message_user(request, f"Reset {count} budget(s).")

    @admin.action(description="Pause selected budgets")
    def pause_selected(self, request, queryset):
        count = services.pause_budgets(queryset.values_list("pk", flat=True))
        self.message_user(request, f"Paused {count} budget(s).")

    @admin.action(description="Resume selected budgets")
    def resume_selected(self, request, queryset):
        count = services.resume_budgets(queryset.values_list("pk", flat=True))
        self.message_user(request, f"Resumed {count} budget(s).")


class BudgetInline(BudgetStatusColumns, admin.TabularInline):
    """Budgets on the organization page (OrganizationAdmin below)."""

    model = Budget
    form = BudgetForm
    extra = 0
    fields = ["feature", "api_key", "user", "period", "amount", "action", "thresholds", "is_active",
              "spent_this_period", "used", "forecast"]
    readonly_fields = ["spent_this_period", "used", "forecast"]
    show_change_link = True
    raw_id_fields = ["api_key", "user"]


# The organization page (tenants.admin) with its budgets: tenants knows nothing of budgets.
admin.site.unregister(Organization)


@admin.register(Organization)
class OrganizationAdmin(tenants_admin.OrganizationAdmin):
    inlines = [*tenants_admin.OrganizationAdmin.inlines, BudgetInline]


class AlertDeliveryInline(admin.TabularInline):
    model = AlertDelivery
    extra = 0
    can_delete = False
    readonly_fields = ["channel", "status", "attempts", "last_error", "delivered_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["created_at", "budget_scope", "headline", "spent_usd", "delivery", "acknowledged"]
    list_filter = ["kind", ("acknowledged_at", admin.EmptyFieldListFilter), "budget__organization"]
    list_select_related = ["budget__organization", "budget__feature", "budget__api_key", "budget__user"]
    fields = ["budget", "kind", "threshold_percent", "window_start", "window_end", "amount_usd", "spent_usd",
              "forecast_usd", "created_at", "acknowledged_at", "acknowledged_by"]
    readonly_fields = fields
    spent_usd = money_column("spent", "spent", rounded=True)
    amount_usd = money_column("amount", "budget amount", rounded=True)
    forecast_usd = money_column("forecast", "forecast", rounded=True)
    inlines = [AlertDeliveryInline]
    actions = ["acknowledge_selected"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="budget")
    def budget_scope(self, obj):
        return obj.budget.scope_label

    @admin.display(description="delivery")
    def delivery(self, obj):
        return ", ".join(f"{d.channel} {d.status}" for d in obj.deliveries.all())

    @admin.display(description="acknowledged", boolean=True)
    def acknowledged(self, obj):
        return obj.acknowledged_at is not None

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("deliveries")

    @admin.action(description="Acknowledge selected alerts")
    def acknowledge_selected(self, request, queryset):
        count = alerts.acknowledge_alerts(queryset.values_list("pk", flat=True), request.user)
        self.message_user(request, f"Acknowledged {count} alert(s).")
