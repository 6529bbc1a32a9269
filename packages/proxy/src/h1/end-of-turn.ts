/**
 * Work gathered over one turn of the event loop and done once at its end (`setImmediate`, after
 * every I/O callback of the turn). The proxy writes to sockets this way — upstream requests and
 * finished answers go out together: measured, writing each as soon as it was ready woke the peer
 * once per message and cost both sides more CPU per request.
 */
export function atEndOfTurn<T>(run: (item: T) => void): (item: T) => void {
  let items: T[] = [];
  const flush = () => {
    const now = items;
    items = [];
    for (const item of now) run(item);
  };
  return (item) => {
    if (items.length === 0) setImmediate(flush);
    items.push(item);
  };
}
