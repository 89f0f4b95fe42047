"""``POST /api/cache/purge/``: purge an org's (or one feature's) cached answers and embeddings.

The usage API's rule for who may act on an org: its managers, and staff.
Another org's slug is a 404, as there.
"""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.models import Feature, Organization
from tenants.services import can_view_organization

from .services import purge


class PurgeRequest(serializers.Serializer):
    org = serializers.SlugField(help_text="Organization slug.")
    feature = serializers.SlugField(required=False, help_text="Only this feature's entries (default: the whole org).")


class PurgeResult(serializers.Serializer):
    org = serializers.CharField()
    feature = serializers.CharField(allow_null=True)
    semantic_entries = serializers.IntegerField(help_text="Semantic entries deleted; exact and embedding entries "
                                                "are made unreachable at once and expire on their own.")


class CachePurgeView(APIView):
    @extend_schema(request=PurgeRequest, responses=PurgeResult, summary="Purge cached answers", tags=["cache"])
    def post(self, request):
        query = PurgeRequest(data=request.data)
        query.is_valid(raise_exception=True)
        org = Organization.objects.filter(slug=query.validated_data["org"]).first()
        if org is None or not can_view_organization(request.user, org):
            raise Http404("No such organization.")
        feature = query.validated_data.get("feature")
        if feature is not None and not Feature.objects.filter(organization=org, slug=feature).exists():
            raise serializers.ValidationError({"feature": f"{org.slug} has no feature {feature!r}."})
        purged = purge(org.pk, feature)
        return Response(PurgeResult({"org": org.slug, "feature": feature,
                                     "semantic_entries": purged.semantic_entries}).data)
