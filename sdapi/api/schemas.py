"""Response bodies, exactly as the API document shows them (plus added fields, never removed ones)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec

from sdapi.core.deliveries import Delivery, DeliveryStatus
from sdapi.core.results import iso
from sdapi.core.tasks import Progress
from sdapi.previews import Preview
from sdapi.service.status import ServiceHealth
from sdapi.service.tasks import TaskView

TASK_CREATED_MESSAGE = "任务已创建，正在处理中"


class GenerateResponse(msgspec.Struct):
    task_id: Annotated[str, msgspec.Meta(description="任务ID，用于查询任务状态")]
    status: Annotated[str, msgspec.Meta(description="任务状态：pending、processing、completed、failed")]
    message: Annotated[str, msgspec.Meta(description="响应消息")]


class LoraUsed(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(description="LoRA 名称")]
    weight: Annotated[float, msgspec.Meta(description="权重")]


class ProgressResponse(msgspec.Struct):
    step: Annotated[int, msgspec.Meta(description="已完成的去噪步数（所有批次合计）")]
    total_steps: Annotated[int, msgspec.Meta(description="总去噪步数（所有批次合计；开始前为 0）")]
    images_done: Annotated[int, msgspec.Meta(description="已生成的图片张数")]
    num_images: Annotated[int, msgspec.Meta(description="请求的图片张数")]
    percent: Annotated[float, msgspec.Meta(description="完成百分比（0–100）")]


class ImageResponse(msgspec.Struct):
    url: Annotated[str, msgspec.Meta(description="图片URL（与 result_url/result_urls 相同）")]
    seed: Annotated[int, msgspec.Meta(description="这张图片的种子（任务 seed + 序号）")]
    width: int
    height: int
    bytes: Annotated[int, msgspec.Meta(description="文件大小（字节）")]
    sha256: Annotated[str, msgspec.Meta(description="文件内容的 sha256")]


class PreviewResponse(msgspec.Struct):
    step: Annotated[int, msgspec.Meta(description="预览对应的已完成步数")]
    total_steps: Annotated[int, msgspec.Meta(description="总步数")]
    image: Annotated[str, msgspec.Meta(description="预览图（data:image/jpeg;base64,… 或 data:image/webp;base64,…）")]
    width: Annotated[int, msgspec.Meta(description="预览图宽度（最长边不超过 previews.max_side）")]
    height: Annotated[int, msgspec.Meta(description="预览图高度")]


def preview_response(preview: Preview) -> PreviewResponse:
    return PreviewResponse(
        step=preview.step,
        total_steps=preview.total_steps,
        image=preview.data_url,
        width=preview.width,
        height=preview.height,
    )


class TaskResponse(msgspec.Struct):
    task_id: Annotated[str, msgspec.Meta(description="任务ID")]
    status: Annotated[str, msgspec.Meta(description="任务状态：pending、processing、completed、failed")]
    result_url: Annotated[str | None, msgspec.Meta(description="单张图片URL（num_images=1 时有效）")]
    result_urls: Annotated[list[str] | None, msgspec.Meta(description="多张图片URL列表（num_images>1 时有效）")]
    error_message: Annotated[str | None, msgspec.Meta(description="错误信息（失败时）")]
    created_at: Annotated[str, msgspec.Meta(description="任务创建时间（ISO 8601，UTC）")]
    updated_at: Annotated[str, msgspec.Meta(description="任务更新时间（ISO 8601，UTC）")]
    seed: Annotated[int, msgspec.Meta(description="使用的随机种子（未指定时为随机选取的值）；第k张图片使用 seed+k")]
    num_images: Annotated[int, msgspec.Meta(description="请求的图片张数")]
    attempts: Annotated[
        int, msgspec.Meta(description="已开始运行的次数（服务中断后会重新运行；正常停机时中断的那次不计入）")
    ]
    engine: Annotated[str | None, msgspec.Meta(description="生成图片的引擎（torch 或 onnx），完成后有值")] = None
    loras: Annotated[list[LoraUsed], msgspec.Meta(description="本任务使用的 LoRA（含配置的默认 LoRA）及其权重")] = []
    embeddings: Annotated[
        list[str], msgspec.Meta(description="提示词或负面提示词中写出的嵌入（textual inversion）名称")
    ] = []
    controlnets: Annotated[list[str], msgspec.Meta(description="本任务的 ControlNet 单元使用的模型")] = []
    ip_adapters: Annotated[list[str], msgspec.Meta(description="本任务的图片提示使用的 IP-Adapter")] = []
    callback_status: Annotated[
        str | None, msgspec.Meta(description="回调投递状态：pending、delivered、failed；无 callback_url 时为 null")
    ] = None
    callback_attempts: Annotated[
        int | None, msgspec.Meta(description="回调已尝试投递的次数；无 callback_url 时为 null")
    ] = None
    error_code: Annotated[
        str | None,
        msgspec.Meta(
            description="失败原因代码（失败时）：cancelled、out_of_memory、storage_unavailable、model_not_loaded、"
            "attempts_exhausted、invalid_input、internal"
        ),
    ] = None
    started_at: Annotated[str | None, msgspec.Meta(description="本次运行开始时间（ISO 8601，UTC）")] = None
    finished_at: Annotated[str | None, msgspec.Meta(description="结束时间（ISO 8601，UTC）")] = None
    progress: Annotated[
        ProgressResponse | None, msgspec.Meta(description="运行进度（运行中约每秒更新；结束后保留最后的值）")
    ] = None
    queue_position: Annotated[int | None, msgspec.Meta(description="排队位置（仅 pending：0 表示下一个运行）")] = None
    estimated_start_at: Annotated[
        str | None,
        msgspec.Meta(description="预计开始时间（仅 pending；按实测速度估算，尚无测量时为 null）"),
    ] = None
    owner: Annotated[str | None, msgspec.Meta(description="创建任务的 API Key 名称（不是 Key 本身）")] = None
    images: Annotated[
        list[ImageResponse] | None,
        msgspec.Meta(description="完成时每张图片的 URL、种子、尺寸、大小和 sha256（顺序同 result_urls）"),
    ] = None
    request_id: Annotated[
        str | None, msgspec.Meta(description="创建任务的请求的 X-Request-ID（日志中每一行都带有它）")
    ] = None
    model: Annotated[str | None, msgspec.Meta(description="生成图片的模型名称（GET /api/v1/models）")] = None
    preview: Annotated[
        PreviewResponse | None,
        msgspec.Meta(description="最新的实时预览（仅在请求带 ?preview=1 且任务运行中、已有预览时）"),
    ] = None


class CallbackAttemptResponse(msgspec.Struct):
    at: Annotated[str, msgspec.Meta(description="尝试时间（ISO 8601，UTC）")]
    webhook_id: Annotated[str, msgspec.Meta(description="该次投递的 webhook-id（重新发送时为新的 ID）")]
    http_status: Annotated[int | None, msgspec.Meta(description="接收方的 HTTP 状态码（有应答时）")]
    error: Annotated[str | None, msgspec.Meta(description="未成功的原因（超时、连接失败、HTTP 500…）")]
    duration_ms: Annotated[float | None, msgspec.Meta(description="耗时（毫秒）")]


class CallbackLogResponse(msgspec.Struct):
    task_id: str
    webhook_id: Annotated[str, msgspec.Meta(description="当前投递的 webhook-id")]
    url: Annotated[str, msgspec.Meta(description="回调地址")]
    status: Annotated[str, msgspec.Meta(description="投递状态：pending、delivered、failed")]
    attempts: Annotated[list[CallbackAttemptResponse], msgspec.Meta(description="每一次尝试，含之前的重新发送")]
    next_attempt_at: Annotated[str | None, msgspec.Meta(description="下次尝试时间（pending 时）")]


def callback_log_response(delivery: Delivery) -> CallbackLogResponse:
    return CallbackLogResponse(
        task_id=delivery.task_id,
        webhook_id=delivery.id,
        url=delivery.url,
        status=delivery.status.value,
        attempts=[
            CallbackAttemptResponse(
                at=iso(datetime.fromtimestamp(record.at, UTC)),
                webhook_id=record.webhook_id,
                http_status=record.http_status,
                error=record.error,
                duration_ms=record.duration_ms,
            )
            for record in delivery.log
        ],
        next_attempt_at=(
            iso(datetime.fromtimestamp(delivery.next_attempt_at, UTC))
            if delivery.status is DeliveryStatus.PENDING
            else None
        ),
    )


class TaskListResponse(msgspec.Struct):
    tasks: Annotated[list[TaskResponse], msgspec.Meta(description="任务，按创建时间从新到旧")]
    next_cursor: Annotated[str | None, msgspec.Meta(description="下一页的游标；没有更多时为 null")]


class SchedulerEntry(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(description="采样方法（scheduler 字段的值）")]
    a1111_name: Annotated[str, msgspec.Meta(description="AUTOMATIC1111 中的名称")]
    karras: Annotated[bool, msgspec.Meta(description="是否支持 use_karras_sigmas")]


class SchedulerListResponse(msgspec.Struct):
    schedulers: list[SchedulerEntry]
    default: Annotated[
        str | None, msgspec.Meta(description="scheduler 为 null 时使用的（defaults.scheduler；null 表示模型自带的）")
    ]


class SpeedOptions(msgspec.Struct):
    """The speed levers a model's requests may pull (sdapi.core.speed)."""

    vae_decoder: Annotated[list[str], msgspec.Meta(description="可用的解码器：full，以及有微型解码器时的 tiny")]
    step_cache: Annotated[list[str], msgspec.Meta(description="可用的 step_cache 模式（空：不支持步间缓存）")]
    token_merging: Annotated[bool, msgspec.Meta(description="是否可用 token_merging（tomesd）")]


class ModelResponse(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(description="模型名称（请求的 model 字段）")]
    family: Annotated[str, msgspec.Meta(description="模型家族：sd1、sd2、sdxl、sd3、flux、flux2-klein、z-image")]
    native_size: Annotated[list[int], msgspec.Meta(description="原生尺寸 [宽, 高]：请求与配置都未给出尺寸时使用")]
    source: Annotated[str, msgspec.Meta(description="模型来源（目录、文件或 hub id）")]
    sha256: Annotated[str | None, msgspec.Meta(description="权重的 sha256（hub id 为 null）")]
    engines: Annotated[list[str], msgspec.Meta(description="可用的引擎：torch、onnx")]
    loaded: Annotated[bool, msgspec.Meta(description="是否已有 worker 载入内存")]
    default: Annotated[bool, msgspec.Meta(description="是否为默认模型（请求未指定 model 时使用）")]
    load_errors: Annotated[
        dict[str, str],
        msgspec.Meta(description="无法载入此模型的在线 worker（worker ID -> 原因）；其任务交给能载入的 worker"),
    ] = {}
    inpainting: Annotated[
        bool, msgspec.Meta(description="局部重绘（inpainting）模型（UNet 输入 9 通道）；文生图、图生图也可用")
    ] = False
    family_label: Annotated[str, msgspec.Meta(description="模型家族的名称，如 FLUX.1")] = ""
    guidance: Annotated[
        str,
        msgspec.Meta(
            description="guidance_scale 的含义：cfg（无分类器引导，可用 negative_prompt）、embedded（FLUX.1 [dev] 的"
            "内嵌引导，无 negative_prompt）、distilled（蒸馏模型，无引导：guidance_scale 至多 1）"
        ),
    ] = "cfg"
    default_steps: Annotated[int, msgspec.Meta(description="请求未给出 num_inference_steps 时的步数")] = 30
    default_guidance_scale: Annotated[float, msgspec.Meta(description="请求未给出 guidance_scale 时的值")] = 7.5
    schedulers: Annotated[list[str], msgspec.Meta(description="此模型可用的 scheduler")] = []
    speed_options: Annotated[
        SpeedOptions | None,
        msgspec.Meta(description="此模型可用的提速选项（vae_decoder、step_cache 模式、token_merging）"),
    ] = None


class ModelListResponse(msgspec.Struct):
    models: list[ModelResponse]


class DetectResponse(msgspec.Struct):
    image: Annotated[str, msgspec.Meta(description="预处理后的图片（data:image/png;base64, 前缀）")]


class WorkerResponse(msgspec.Struct):
    id: Annotated[str, msgspec.Meta(description="工作进程ID（主机名-进程号-随机后缀）")]
    host: Annotated[str, msgspec.Meta(description="所在主机")]
    device: Annotated[str, msgspec.Meta(description="推理设备，如 cpu、cuda:1")]
    engine: Annotated[str, msgspec.Meta(description="推理引擎")]
    model: Annotated[str, msgspec.Meta(description="模型来源")]
    model_loaded: Annotated[bool, msgspec.Meta(description="模型是否已加载")]
    model_error: Annotated[str | None, msgspec.Meta(description="模型加载失败时的原因")]
    current_task: Annotated[str | None, msgspec.Meta(description="正在运行的任务ID")]
    started_at: Annotated[str, msgspec.Meta(description="进程启动时间（ISO 8601，UTC）")]
    last_heartbeat_at: Annotated[str, msgspec.Meta(description="最近一次心跳（数据库时钟）")]
    models_failed: Annotated[
        dict[str, str],
        msgspec.Meta(description="此 worker 无法载入的模型（名称 -> 原因）：其任务留给其他 worker，并按退避重试"),
    ] = {}


class HealthResponse(msgspec.Struct):
    status: Annotated[str, msgspec.Meta(description='服务状态，正常为 "ok"')]
    model_loaded: Annotated[bool, msgspec.Meta(description="模型是否已加载完成")]
    engine: Annotated[str, msgspec.Meta(description="推理引擎：torch，或 auto/onnx（ONNX 导出，torch 兜底）")]
    device: Annotated[str, msgspec.Meta(description="推理设备：cpu 或 cuda")]
    dtype: Annotated[str, msgspec.Meta(description="推理精度")]
    providers: Annotated[list[str], msgspec.Meta(description="ONNX Runtime 使用中的 execution providers（仅 ONNX）")]
    storage: Annotated[str, msgspec.Meta(description='图片存储状态，正常为 "ok"')]
    queue_pending: Annotated[int, msgspec.Meta(description="排队中的任务数")]
    model_error: Annotated[str | None, msgspec.Meta(description="模型加载失败时的原因")] = None
    role: Annotated[str, msgspec.Meta(description="本节点的角色：all、api 或 worker")] = "all"
    queue_processing: Annotated[int, msgspec.Meta(description="运行中的任务数")] = 0
    workers: Annotated[
        list[WorkerResponse],
        msgspec.Meta(description="在线的工作进程（心跳在 queue.lease_seconds 内）；model_loaded 为其中任一已加载模型"),
    ] = []


class ErrorResponse(msgspec.Struct):
    detail: str


class ValidationErrorItem(msgspec.Struct):
    loc: list[str]
    msg: str
    type: str


class ValidationErrorResponse(msgspec.Struct):
    detail: list[ValidationErrorItem]


def health_response(health: ServiceHealth) -> HealthResponse:
    return HealthResponse(
        status="ok",
        model_loaded=health.model_loaded,
        engine=health.engine,
        device=health.device,
        dtype=health.dtype,
        providers=health.providers,
        storage=health.storage,
        queue_pending=health.queue_pending,
        model_error=health.model_error,
        role=health.role,
        queue_processing=health.queue_processing,
        workers=[msgspec.convert(worker, WorkerResponse, from_attributes=True) for worker in health.workers],
    )


def task_response(view: TaskView) -> TaskResponse:
    """The task body: the contract's seven fields (with its result URL rule) and our additions."""
    task, delivery = view.task, view.delivery
    return TaskResponse(
        task_id=task.id,
        status=task.status.value,
        result_url=view.result_url,
        result_urls=view.result_urls,
        error_message=task.error_message,
        created_at=iso(task.created_at),
        updated_at=iso(task.updated_at),
        seed=task.params.seed,
        num_images=task.params.num_images,
        attempts=task.attempts,
        engine=task.engine,
        loras=[LoraUsed(name=spec.name, weight=spec.weight) for spec in task.params.loras],
        embeddings=[spec.name for spec in task.params.embeddings],
        controlnets=[unit.model for unit in task.params.controlnets],
        ip_adapters=[prompt.model for prompt in task.params.ip_adapters],
        callback_status=None if delivery is None else delivery.status.value,
        callback_attempts=None if delivery is None else delivery.attempts,
        error_code=None if task.error_code is None else task.error_code.value,
        started_at=None if task.started_at is None else iso(task.started_at),
        finished_at=None if task.finished_at is None else iso(task.finished_at),
        progress=None if task.progress is None else _progress(task.progress),
        queue_position=view.queue_position,
        estimated_start_at=None if view.estimated_start_at is None else iso(view.estimated_start_at),
        owner=task.owner,
        request_id=task.request_id,
        model=task.params.model,
        images=[
            ImageResponse(
                url=url, seed=image.seed, width=image.width, height=image.height, bytes=image.bytes, sha256=image.sha256
            )
            for image, url in zip(task.images, view.image_urls or [], strict=True)
        ]
        if task.images
        else None,
    )


def _progress(progress: Progress) -> ProgressResponse:
    return ProgressResponse(
        step=progress.step,
        total_steps=progress.total_steps,
        images_done=progress.images_done,
        num_images=progress.num_images,
        percent=progress.percent,
    )
