"""The compatibility dialects (OpenAI Images, AUTOMATIC1111): each translates its wire format to the native request
and the task back, over the native service (common.py: waiting for a task's end, the shared errors)."""
