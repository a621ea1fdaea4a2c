"""AUTOMATIC1111's API under /sdapi/v1, a thin translation onto the native task pipeline: decode A1111's request,
map it to a GenerationRequest, run it as the caller's task to its end, answer in A1111's shape. Nothing here
generates or stores, and what the native request checks decide is left to them (sdapi.service.admission): this
package checks only A1111's own fields, and every error comes back in A1111's error shape.

`webuiapi.WebUIApi(host, port)` works unchanged. A1111 clients send every field with its default (enable_hr false,
restore_faces false, eta 1.0, styles []...), so an option sdapi does not implement is refused (422, naming it) only
when it is set to a value that would change the picture; a field this module does not know is likewise accepted
only while it is empty (null, false, 0, "", [] or {}).
"""

from sdapi.api.dialects.a1111.routes import a1111_router, controlnet_router

__all__ = ["a1111_router", "controlnet_router"]
