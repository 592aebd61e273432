"""Bedrock's ListFoundationModels and GetFoundationModel over the catalog, as botocore's ``bedrock``
service model serializes and parses them: the models the caller's tenant may use, each served on demand
(through bedrock-runtime's InvokeModel and Converse) and in batch jobs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from bulkinfer.api.bedrock.routes import CallerDep
from bulkinfer.api.errors import BEDROCK
from bulkinfer.api.ondemand import invoke_service, model_or_404
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.registry import capabilities_of

router = APIRouter()

Modality = Literal["TEXT", "IMAGE", "EMBEDDING"]
_ARN_PREFIX = "::foundation-model/"


@router.get("/foundation-models")
async def list_foundation_models(
    request: Request,
    who: CallerDep,
    by_provider: Annotated[str | None, Query(alias="byProvider", max_length=63)] = None,
    by_customization_type: Annotated[
        Literal["FINE_TUNING", "CONTINUED_PRE_TRAINING", "DISTILLATION"] | None,
        Query(alias="byCustomizationType"),
    ] = None,
    by_output_modality: Annotated[Modality | None, Query(alias="byOutputModality")] = None,
    by_inference_type: Annotated[
        Literal["ON_DEMAND", "PROVISIONED"] | None, Query(alias="byInferenceType")
    ] = None,
) -> Response:
    summaries = [summary(spec, who.region) for spec in invoke_service(request).models(who.tenant)]
    wanted = [
        s
        for s in summaries
        if (by_provider is None or s["providerName"].lower() == by_provider.lower())
        and (by_customization_type is None or by_customization_type in s["customizationsSupported"])
        and (by_output_modality is None or by_output_modality in s["outputModalities"])
        and (by_inference_type is None or by_inference_type in s["inferenceTypesSupported"])
    ]
    return JSONResponse({"modelSummaries": wanted})


@router.get("/foundation-models/{model_identifier:path}")
async def get_foundation_model(model_identifier: str, request: Request, who: CallerDep) -> Response:
    """By model id or by its ARN (``arn:aws:bedrock:REGION::foundation-model/ID``)."""
    name = model_identifier.partition(_ARN_PREFIX)[2] if _ARN_PREFIX in model_identifier else model_identifier
    spec = model_or_404(request, who, name, BEDROCK)
    if isinstance(spec, Response):
        return spec
    return JSONResponse({"modelDetails": summary(spec, who.region)})


def summary(spec: ModelSpec, region: str) -> dict[str, Any]:
    """A model as Bedrock's FoundationModelSummary (and FoundationModelDetails, the same keys)."""
    capabilities = capabilities_of(spec)
    inputs: list[Modality] = ["TEXT", "IMAGE"] if capabilities.images else ["TEXT"]
    outputs: list[Modality] = []
    if capabilities.chat:
        outputs.append("TEXT")
    if capabilities.embeddings:
        outputs.append("EMBEDDING")
    return {
        "modelArn": f"arn:aws:bedrock:{region}{_ARN_PREFIX}{spec.name}",
        "modelId": spec.name,
        "modelName": spec.name,
        "providerName": spec.provider,
        "inputModalities": inputs,
        "outputModalities": outputs,
        "responseStreamingSupported": False,
        "customizationsSupported": [],
        "inferenceTypesSupported": ["ON_DEMAND"],
        "modelLifecycle": {"status": "ACTIVE"},
    }
