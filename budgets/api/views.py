from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from budgets.services import get_budget


class BudgetSerializer(serializers.Serializer):
    currency = serializers.CharField()
    limit = serializers.DecimalField(max_digits=12, decimal_places=6)
    spent = serializers.DecimalField(max_digits=12, decimal_places=6)
    reserved = serializers.DecimalField(max_digits=12, decimal_places=6)
    remaining = serializers.DecimalField(max_digits=12, decimal_places=6)
    period_start = serializers.DateField()
    period_end = serializers.DateField()


class BudgetView(APIView):
    @extend_schema(responses={200: BudgetSerializer})
    def get(self, request: Request) -> Response:
        """The user's monthly budget: limit, spent, reserved for running batches, remaining."""
        return Response(BudgetSerializer(get_budget(request.user)).data)
