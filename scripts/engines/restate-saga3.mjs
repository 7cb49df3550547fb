// saga3 on Restate: three journaled steps, each with a compensation, undone in reverse order
// when a later step fails (Restate's documented saga pattern).
// Node 20 (Debian 12's) lacks Promise.withResolvers, which this SDK uses.
Promise.withResolvers ??= function () {
  let resolve, reject;
  const promise = new Promise((yes, no) => { resolve = yes; reject = no; });
  return { promise, resolve, reject };
};
const restate = await import("@restatedev/restate-sdk");

const saga3 = restate.service({
  name: "saga3",
  handlers: {
    run: async (ctx, input) => {
      const undo = [];
      try {
        for (const step of ["one", "two", "three"]) {
          undo.push(() => ctx.run(`undo-${step}`, async () => ({ step })));
          await ctx.run(step, async () => ({ step, n: input?.n ?? 0 }));
        }
        return { status: "COMPLETED" };
      } catch (e) {
        if (e instanceof restate.TerminalError) {
          for (const compensate of undo.reverse()) await compensate();
        }
        throw e;
      }
    },
  },
});

restate.serve({ services: [saga3], port: Number(process.env.PORT ?? 9080) });
