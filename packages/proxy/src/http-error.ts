/** An answer the proxy gives itself: the status, a message safe to show, and the cause for the log. */
export class HttpError extends Error {
  constructor(readonly status: number, readonly publicMessage: string, readonly internal?: string, readonly headers: Record<string, string> = {}) {
    super(internal ?? publicMessage);
  }
}

export const statusText: Record<number, string> = { 429: 'Too Many Requests', 500: 'Internal Server Error', 501: 'Not Implemented', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 413: 'Content Too Large', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' };
