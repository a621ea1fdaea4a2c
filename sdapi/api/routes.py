"""Route handlers: decode, call one function of the task service or the status service, encode. Nothing else."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import File, ServerSentEvent, ServerSentEventMessage

from sdapi.addons import ADDON_KINDS
from sdapi.api.auth import caller_of
from sdapi.api.error_docs import error_responses
from sdapi.api.schemas import (
    TASK_CREATED_MESSAGE,
    CallbackLogResponse,
    DetectResponse,
    ErrorResponse,
    GenerateResponse,
    HealthResponse,
    ModelListResponse,
    ModelResponse,
    SchedulerEntry,
    SchedulerListResponse,
    TaskListResponse,
    TaskResponse,
    ValidationErrorResponse,
    callback_log_response,
    health_response,
    preview_response,
    task_response,
)
from sdapi.api.validation import strict_body
from sdapi.core.addons import AddonKind
from sdapi.core.request import GenerationRequest, PreprocessorOption
from sdapi.core.tasks import TaskStatus
from sdapi.errors import SdapiError
from sdapi.media.images import CONTENT_TYPES, decode_init_image
from sdapi.observability import metrics
from sdapi.service.extras import Extras
from sdapi.service.status import StatusService
from sdapi.service.tasks import MAX_PAGE, TaskService
from sdapi.storage.local import IMAGE_ROUTE

logger = logging.getLogger(__name__)


def _errors(*statuses: int, **described: str) -> dict[int, ResponseSpec]:
    """The native API's documented errors: `{"detail": ...}`, 401 and 500 on every operation behind the key."""
    return error_responses(ErrorResponse, *statuses, 401, 500, **described)


# Every operation that reads a task answers 503 while the task database is unreachable.
_TASK_ERRORS = _errors(400, 404, 503)
_CANCEL_ERRORS = _errors(400, 404, 409, 503, s409="任务已结束，无法取消")


def _service(state: State) -> TaskService:
    service: TaskService = state.service
    return service


def _status(state: State) -> StatusService:
    status: StatusService = state.status
    return status


def _base_url(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/")


@get(["/health", "/api/health"], summary="健康检查", description="检查服务状态和模型加载情况。无需 API Key。")
async def health(state: State) -> HealthResponse:
    return health_response(await _status(state).health())


class TaskController(Controller):
    """The authenticated API; mounted under /api/v1 behind the API key guard (see create_app)."""

    path = "/"
    tags = ("tasks",)
    security = ({"APIKeyHeader": []},)

    @post(
        "/generate",
        summary="图片生成",
        description="提交文生图（不提供 init_image）或图生图（提供 init_image）任务，立即返回任务ID。",
        status_code=200,
        before_request=strict_body(GenerationRequest),
        responses={
            **_errors(400, 409, 413, 429, 503, s409="Idempotency-Key 已用于不同的请求"),
            422: ResponseSpec(ValidationErrorResponse, description="参数验证失败"),
        },
    )
    async def generate(
        self,
        data: GenerationRequest,
        request: Request[Any, Any, Any],
        idempotency_key: Annotated[
            str | None,
            Parameter(
                header="Idempotency-Key",
                description=(
                    "可选。同一 API Key 下，相同 Idempotency-Key 与相同请求体返回原任务（不重复生成）；"
                    "请求体不同则 409。保留 api.idempotency_ttl_hours 小时"
                ),
                min_length=1,
                max_length=255,
            ),
        ] = None,
    ) -> GenerateResponse:
        service = _service(request.app.state)
        task = await service.submit(data, _base_url(request), caller_of(request), idempotency_key)
        return GenerateResponse(task_id=task.id, status=task.status.value, message=TASK_CREATED_MESSAGE)

    @get(
        "/tasks/{task_id:str}",
        summary="查询任务状态",
        description="查询图片生成任务的状态和结果。",
        responses=_TASK_ERRORS,
    )
    async def get_task(
        self,
        task_id: str,
        request: Request[Any, Any, Any],
        wait: Annotated[
            float | None,
            Parameter(
                description="可选：最多等待的秒数（0–60）。任务结束或时间到时再返回，省去频繁轮询",
                ge=0,
                le=60,
                # Litestar leaves a bound of 0 out of the schema (it tests the bound for truth): stated here.
                schema_extra={"minimum": 0},
            ),
        ] = None,
        preview: Annotated[
            bool,
            Parameter(description="为 true（1）时，运行中的任务附带最新的实时预览图（preview 字段）"),
        ] = False,
    ) -> TaskResponse:
        service = _service(request.app.state)
        if wait:
            view = await service.wait(task_id, wait, _base_url(request), caller_of(request))
        else:
            view = await service.get(task_id, _base_url(request), caller_of(request))
        body = task_response(view)
        if preview:
            latest = await service.latest_preview(view)
            if latest is not None:
                body = msgspec.structs.replace(body, preview=preview_response(latest))
        return body

    @get(
        "/tasks/{task_id:str}/events",
        summary="任务事件流（SSE）",
        description=(
            "Server-Sent Events：先发一个 status 事件（完整任务体），之后状态变化时发 status、进度变化时发 progress，"
            "运行中有新的实时预览时发 preview（{step, total_steps, image, width, height}，image 为 data URL），"
            "任务结束时发最后一个 done 事件后关闭连接。无变化时每 15 秒发一条注释保持连接。"
        ),
        responses=_TASK_ERRORS,
        media_type="text/event-stream",
    )
    async def task_events(self, task_id: str, request: Request[Any, Any, Any]) -> ServerSentEvent:
        service = _service(request.app.state)
        caller, base_url = caller_of(request), _base_url(request)
        await service.get(task_id, base_url, caller)  # a 404 before the stream starts

        async def stream() -> AsyncIterator[ServerSentEventMessage]:
            async for event, view, preview in service.events(task_id, base_url, caller):
                if event == "keepalive":
                    yield ServerSentEventMessage(comment="keep-alive")
                    continue
                data: Any
                if preview is not None:
                    data = preview_response(preview)
                elif event == "progress":
                    data = task_response(view).progress
                else:
                    data = task_response(view)
                yield ServerSentEventMessage(event=event, data=msgspec.json.encode(data).decode())

        return ServerSentEvent(stream())

    @get(
        "/tasks",
        summary="任务列表",
        description=(
            "本 API Key 创建的任务（admin Key 可见全部），按创建时间从新到旧，游标分页：把 next_cursor 作为 cursor "
            "传入取下一页，期间新提交的任务不会打乱分页。"
        ),
        responses=_errors(400, 503, s400="参数错误（limit 超出范围、cursor 无效）"),
    )
    async def list_tasks(
        self,
        request: Request[Any, Any, Any],
        status: Annotated[
            Literal["pending", "processing", "completed", "failed"] | None,
            Parameter(description="只列出此状态的任务"),
        ] = None,
        limit: Annotated[
            # Documented here, checked by the service (its message names the range).
            int,
            Parameter(description="每页条数（1–100）", schema_extra={"minimum": 1, "maximum": MAX_PAGE}),
        ] = 20,
        cursor: Annotated[str | None, Parameter(description="上一页返回的 next_cursor")] = None,
    ) -> TaskListResponse:
        service = _service(request.app.state)
        page = await service.list(
            caller_of(request), _base_url(request), None if status is None else TaskStatus(status), limit, cursor
        )
        return TaskListResponse(tasks=[task_response(view) for view in page.tasks], next_cursor=page.next_cursor)

    @post(
        "/tasks/{task_id:str}/cancel",
        summary="取消任务",
        description=(
            "排队中的任务立即结束；运行中的任务在下一个去噪步骤时停止（本响应中可能仍为 processing）。"
            "取消后任务状态为 failed，error_message 为“任务已取消”，error_code 为 cancelled，回调照常发送。"
        ),
        status_code=200,
        responses=_CANCEL_ERRORS,
    )
    async def cancel_task(self, task_id: str, request: Request[Any, Any, Any]) -> TaskResponse:
        service = _service(request.app.state)
        return task_response(await service.cancel(task_id, _base_url(request), caller_of(request)))

    @get(
        "/tasks/{task_id:str}/callback",
        summary="回调投递记录",
        description="任务回调的投递状态与每一次尝试（时间、HTTP 状态或错误、耗时）。",
        responses=_errors(400, 404, 503, s404="任务不存在，或任务没有回调"),
    )
    async def callback_log(self, task_id: str, request: Request[Any, Any, Any]) -> CallbackLogResponse:
        service = _service(request.app.state)
        return callback_log_response(await service.callback_log(task_id, caller_of(request)))

    @post(
        "/tasks/{task_id:str}/callback/redeliver",
        summary="重新发送回调",
        description=(
            "再次发送已结束任务的最终回调（相同的请求体，新的 webhook-id，因为这是一次新的投递），"
            "供丢失了回调的接收方使用。"
        ),
        status_code=200,
        responses=_errors(400, 404, 409, 503, s404="任务不存在，或任务没有回调", s409="回调仍在投递中"),
    )
    async def redeliver(self, task_id: str, request: Request[Any, Any, Any]) -> CallbackLogResponse:
        service = _service(request.app.state)
        return callback_log_response(await service.redeliver(task_id, caller_of(request)))

    @post(
        "/tasks/{task_id:str}/rerun",
        summary="重新运行任务",
        description=(
            "以完全相同的参数与种子创建一个新任务（同一模型与引擎下图片逐像素相同），返回新任务ID。"
            "图生图任务结束后不保留 init_image，只能在结束前重新运行。"
        ),
        status_code=200,
        responses=_errors(400, 404, 429, 503, s400="无法重新运行（已结束的图生图任务）"),
    )
    async def rerun_task(self, task_id: str, request: Request[Any, Any, Any]) -> GenerateResponse:
        task = await _service(request.app.state).rerun(task_id, _base_url(request), caller_of(request))
        return GenerateResponse(task_id=task.id, status=task.status.value, message=TASK_CREATED_MESSAGE)

    @delete(
        "/tasks/{task_id:str}",
        summary="取消任务（POST /tasks/{task_id}/cancel 的别名）",
        description=(
            "与 POST /api/v1/tasks/{task_id}/cancel 相同：取消任务，而不是删除它。任务记录保留，之后仍可用 "
            "GET /api/v1/tasks/{task_id} 查询（status 为 failed，error_code 为 cancelled）。"
        ),
        status_code=200,
        responses=_CANCEL_ERRORS,
    )
    async def delete_task(self, task_id: str, request: Request[Any, Any, Any]) -> TaskResponse:
        service = _service(request.app.state)
        return task_response(await service.cancel(task_id, _base_url(request), caller_of(request)))


@get(
    "/schedulers",
    summary="采样方法列表",
    description="可在 scheduler 中使用的采样方法，及其 AUTOMATIC1111 名称和是否支持 use_karras_sigmas；"
    "给出 model 时只列此模型可用的（流匹配模型：FlowMatchEulerDiscreteScheduler 等）；模型不存在时 404。",
    tags=["tasks"],
    security=[{"APIKeyHeader": []}],
    responses=_errors(404),
)
async def schedulers(state: State, model: str | None = None) -> SchedulerListResponse:
    listing = _status(state).schedulers(model)
    return SchedulerListResponse(
        schedulers=[
            SchedulerEntry(name=name, a1111_name=a1111_name, karras=karras)
            for name, a1111_name, karras in listing.schedulers
        ],
        default=listing.default,
    )


@get(
    "/models",
    summary="模型列表",
    description="本服务提供的模型：名称、家族、原生尺寸、来源、sha256、引擎、是否已载入、是否默认。",
    tags=["models"],
    security=[{"APIKeyHeader": []}],
    responses=_errors(503),
)
async def models(state: State) -> ModelListResponse:
    views = await _status(state).models()
    return ModelListResponse(models=[msgspec.convert(view, ModelResponse, from_attributes=True) for view in views])


def addon_controller(kind: AddonKind) -> type[Controller]:
    """The one list/refresh controller, made for add-on kind `kind`: GET /api/v1/{kind.name} lists its library as
    last scanned, POST /api/v1/{kind.name}/refresh scans its folder again; both answer {kind.list_key: [...]}."""
    response_type = msgspec.defstruct(
        kind.entry_type.__name__.replace("Entry", "ListResponse"),
        [(kind.list_key, Annotated[list[kind.entry_type], msgspec.Meta(description=kind.summary)])],  # type: ignore[name-defined]
    )

    async def list_entries(self: Controller, state: State) -> Any:
        return response_type(_status(state).listed(kind.name))

    async def refresh(self: Controller, state: State) -> Any:
        return response_type(await _status(state).rescan(kind.name))

    # Litestar documents and encodes a handler by its annotations: the kind's own list type, not Any.
    for handler in (list_entries, refresh):
        handler.__annotations__ = {"self": Controller, "state": State, "return": response_type}
    refresh_description = f"重新扫描 {kind.config_section}.dir 并返回新的列表。"
    members = {
        "__doc__": f"The {kind.name} library; mounted under /api/v1 behind the API key guard.",
        "path": f"/{kind.name}",
        "tags": (kind.name,),
        "security": ({"APIKeyHeader": []},),
        "list_entries": get("/", summary=kind.summary, description=kind.description, responses=_errors())(list_entries),
        "refresh": post(
            "/refresh",
            summary=kind.refresh_summary,
            description=refresh_description,
            status_code=200,
            responses=_errors(),
        )(refresh),
    }
    return type(f"{response_type.__name__.removesuffix('ListResponse')}Controller", (Controller,), members)


ADDON_CONTROLLERS = [addon_controller(kind) for kind in ADDON_KINDS]


class DetectRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /api/v1/controlnets/detect."""

    image: Annotated[
        str, msgspec.Meta(description="图片的base64编码（data:image/png;base64, 或 data:image/jpeg;base64, 前缀）")
    ]
    preprocessor: Annotated[str, msgspec.Meta(description="预处理器名称，同 controlnets[].preprocessor")] = "none"
    preprocessor_options: dict[str, PreprocessorOption] = {}
    mask_image: Annotated[str | None, msgspec.Meta(description="inpaint 预处理器的蒙版（同 mask_image）")] = None


class ControlNetPreviewController(Controller):
    """The ControlNet preprocessors' preview (the library itself is listed by its add-on controller); mounted under
    /api/v1 behind the API key guard."""

    path = "/controlnets"
    tags = ("controlnets",)
    security = ({"APIKeyHeader": []},)

    @post(
        "/detect",
        summary="预处理预览",
        description="返回预处理器对图片的输出（PNG data URL），即 ControlNet 单元将看到的图。",
        status_code=200,
        before_request=strict_body(DetectRequest),
        responses={**_errors(400, 413), 422: ResponseSpec(ValidationErrorResponse, description="参数验证失败")},
    )
    async def detect(self, data: DetectRequest, state: State) -> DetectResponse:
        limit = state.config.limits.max_init_image_pixels
        raw, _ = await asyncio.to_thread(decode_init_image, data.image, limit, "image")
        mask = None
        if data.mask_image is not None:
            mask, _ = await asyncio.to_thread(decode_init_image, data.mask_image, limit, "mask_image")
        extras: Extras = state.extras
        png = await extras.detect(raw, data.preprocessor, dict(data.preprocessor_options), mask)
        return DetectResponse(image="data:image/png;base64," + base64.b64encode(png).decode("ascii"))


@get(
    "/metrics",
    summary="Prometheus 指标",
    description="Prometheus 文本格式的运行指标（metrics.enabled；metrics.port 设置时改在该端口提供）。无需 API Key。",
    tags=["operations"],
    media_type=MediaType.TEXT,
)
async def metrics_text(state: State) -> Response[bytes]:
    try:
        await _status(state).refresh_gauges()
    except (
        SdapiError
    ) as error:  # the store is down: the process's own metrics still answer (the gauges keep their last values)
        logger.warning("metrics: queue gauges not refreshed: %s", error.message)
    body, content_type = metrics.exposition()
    return Response(body, headers={"content-type": content_type})


@get(f"{IMAGE_ROUTE}/{{key:str}}", include_in_schema=False)
async def image_file(key: str, state: State) -> File:
    """Images from local storage. Public by design (the seed: image URLs are public); keys are unguessable."""
    path = _status(state).image_path(key)
    if path is None:
        raise NotFoundException("图片不存在")
    return File(path, content_disposition_type="inline", media_type=CONTENT_TYPES[path.suffix.lstrip(".")])
