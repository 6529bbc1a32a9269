import type { Logger } from 'pino';

/** One component to stop: its name (for the log) and how. */
export type Cleanup = [component: string, close: () => Promise<void> | void];

/**
 * Stops components in the order given. Each is stopped even when one before it fails (the
 * failure is logged, and the first one rethrown at the end), and one that takes longer than
 * `slowMs` is named in the log while it is awaited: a shutdown that hangs says where.
 */
export async function closeInOrder(cleanups: readonly Cleanup[], logger: Pick<Logger, 'warn' | 'error'>, slowMs = 5000): Promise<void> {
  let failure: unknown;
  for (const [component, close] of cleanups) {
    const slow = setTimeout(() => logger.warn({ component }, `still stopping after ${slowMs / 1000} s`), slowMs);
    slow.unref();
    try {
      await close();
    } catch (err) {
      logger.error({ err, component }, 'stopping failed');
      failure ??= err;
    } finally {
      clearTimeout(slow);
    }
  }
  if (failure !== undefined) throw failure;
}
