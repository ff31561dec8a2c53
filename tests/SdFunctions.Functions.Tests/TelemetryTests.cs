using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using OpenTelemetry;
using OpenTelemetry.Logs;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;
using SdFunctions.Jobs;

using static SdFunctions.Functions.Tests.ApiAnswers;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// The app's telemetry as Program.cs wires it (<see cref="TelemetrySetup.AddGenerationTelemetry"/>), with in-memory
/// exporters in place of Application Insights: one trace per job from the submit to the upload, the service's metrics,
/// logs that carry the job id.
/// </summary>
[Collection(AzuriteCollection.Name)]
public class TelemetryTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>What the exporters received.</summary>
    private sealed class Exported
    {
        public List<Activity> Spans { get; } = [];
        public List<MetricSnapshot> Metrics { get; } = [];
        public LogCapture Logs { get; } = new();

        public Task<TestApp> StartAppAsync(string? modelDirectory = null) => TestApp.StartAsync(modelDirectory, addServices: (services, configuration) =>
        {
            services.AddGenerationTelemetry(configuration)
                .WithTracing(t => t.AddInMemoryExporter(Spans))
                .WithMetrics(m => m.AddInMemoryExporter(Metrics))
                .WithLogging(l => l.AddProcessor(Logs));
            services.AddLogging(b => b.AddFilter<OpenTelemetryLoggerProvider>(null, LogLevel.Information)); // as host.json's default
        });

        public List<Activity> Trace(ActivityTraceId trace) { lock (Spans) return Spans.Where(s => s.TraceId == trace).ToList(); }

        /// <summary>The latest cumulative points of a metric, flushed now.</summary>
        public IReadOnlyList<MetricPoint> Points(TestApp app, string name)
        {
            app.Services.GetRequiredService<MeterProvider>().ForceFlush();
            return Metrics.LastOrDefault(m => m.Name == name)?.MetricPoints ?? [];
        }
    }

    /// <summary>Each log's message and the scope values it was written under (copied: log records are pooled).</summary>
    private sealed class LogCapture : BaseProcessor<LogRecord>
    {
        private readonly List<(string Message, Dictionary<string, object?> Scope)> _records = [];

        public override void OnEnd(LogRecord record)
        {
            var scope = new Dictionary<string, object?>();
            record.ForEachScope((s, state) => { foreach (var kv in s) state[kv.Key] = kv.Value; }, scope);
            lock (_records) _records.Add((record.FormattedMessage ?? "", scope));
        }

        public List<(string Message, Dictionary<string, object?> Scope)> Records { get { lock (_records) return [.. _records]; } }
    }

    private static object? Tag(MetricPoint point, string key)
    {
        foreach (var tag in point.Tags) if (tag.Key == key) return tag.Value;
        return null;
    }

    [Fact]
    public async Task AJobIsOneTraceFromSubmitToUploadWithItsMetricsAndLogs()
    {
        var exported = new Exported();
        await using var app = await exported.StartAppAsync();
        var (submitted, _) = await app.SubmitAsync("""{"prompt": "a lighthouse", "steps": 3, "seed": 5, "scheduler": "ddim"}""");
        string id = IdOf(submitted);
        var record = (await app.Store.GetAsync(id, default))!;
        Assert.True(ActivityContext.TryParse(record.TraceParent, null, out var submitContext));
        var message = (await app.Messages.PeekMessageAsync()).Value;
        Assert.Equal(record.TraceParent, JobMessage.TryParse(message.Body.ToString())!.TraceParent); // the message carries the trace

        // The Functions worker runs each invocation in an "Invoke" span of the host's trace: the run joins the job's trace instead, linked to it.
        ActivityContext invocation;
        using (var invoke = new ActivitySource(TelemetrySetup.WorkerSource).StartActivity("Invoke"))
        {
            invocation = invoke!.Context;
            await app.RunNextMessageAsync();
        }
        Assert.NotEqual(submitContext.TraceId, invocation.TraceId);
        Assert.Equal("succeeded", (await app.JobAsync(id)).GetProperty("status").GetString());

        var trace = exported.Trace(submitContext.TraceId);
        foreach (var span in trace.OrderBy(s => s.StartTimeUtc))
            output.WriteLine($"{span.DisplayName,-20} {span.Duration.TotalMilliseconds,8:F1} ms  parent {(trace.FirstOrDefault(p => p.SpanId == span.ParentSpanId)?.DisplayName ?? "-")}");
        Activity Span(string name) => Assert.Single(trace, s => s.DisplayName == name);
        var send = Span("send generations");
        var process = Span("process generations");
        Assert.Equal((ActivityKind.Producer, ActivityKind.Consumer), (send.Kind, process.Kind));
        Assert.Equal(send.SpanId, process.ParentSpanId);
        Assert.Equal(submitContext.SpanId, send.SpanId);
        Assert.Equal(invocation, Assert.Single(process.Links).Context);
        Assert.Equal((id, id), (send.GetTagItem(JobsTelemetry.JobIdTag), process.GetTagItem(JobsTelemetry.JobIdTag)));
        Assert.Equal(("succeeded", 1), (process.GetTagItem("sdf.job.outcome"), process.GetTagItem("sdf.job.attempt")));
        string[] phases = ["load model", "encode text", "denoise", "decode latents", "upload image"];
        var children = phases.Select(Span).ToList();
        Assert.All(children, c => Assert.Equal(process.SpanId, c.ParentSpanId));
        for (int i = 1; i < children.Count; i++) Assert.True(children[i - 1].StartTimeUtc + children[i - 1].Duration <= children[i].StartTimeUtc, $"{phases[i - 1]} ends before {phases[i]}");
        Assert.Equal(3, Span("denoise").GetTagItem("sdf.steps"));
        Assert.Equal(phases.Length + 2, trace.Count);

        Assert.Equal(1, Assert.Single(exported.Points(app, "sdf.images"), p => (string?)Tag(p, "sdf.outcome") == "succeeded").GetSumLong());
        Assert.Equal(3, exported.Points(app, "sdf.unet.step.duration").Sum(p => p.GetHistogramCount()));
        foreach (string histogram in new[] { "sdf.generation.duration", "sdf.job.queue_wait", "sdf.model.load.duration" })
        {
            var point = Assert.Single(exported.Points(app, histogram));
            Assert.Equal(1, point.GetHistogramCount());
            Assert.True(point.GetHistogramSum() > 0, histogram);
        }

        // The worker's and the submit's logs carry the job id as a scope.
        var started = Assert.Single(exported.Logs.Records, r => r.Message == $"Job {id} attempt 1 started");
        Assert.Equal(id, started.Scope["JobId"]);
        Assert.Equal(id, Assert.Single(exported.Logs.Records, r => r.Message == $"Queued job {id}").Scope["JobId"]);
    }

    [Fact]
    public async Task CanceledAndFailedJobsAreCountedAndAFailedRunIsAnErrorSpan()
    {
        var exported = new Exported();
        await using (var app = await exported.StartAppAsync())
        {
            // Canceled while queued (the API ends it; its message is then ignored), and while running (the run ends it).
            var (submitted, _) = await app.SubmitAsync("""{"prompt": "x", "steps": 2}""");
            string queued = IdOf(submitted);
            await app.CancelAsync(queued);
            await app.RunNextMessageAsync();
            var (running, run) = await app.StartLongJobAsync();
            await app.CancelAsync(running);
            await run;
            Assert.Equal(2, Assert.Single(exported.Points(app, "sdf.images"), p => (string?)Tag(p, "sdf.outcome") == "canceled").GetSumLong());
            async Task<Activity> RunSpan(string id) => Assert.Single(exported.Trace(ActivityContext.Parse((await app.Store.GetAsync(id, default))!.TraceParent!, null).TraceId),
                s => s.DisplayName == "process generations");
            Assert.Equal("already_ended", (await RunSpan(queued)).GetTagItem("sdf.job.outcome"));
            Assert.Equal("canceled", (await RunSpan(running)).GetTagItem("sdf.job.outcome"));
        }

        await using (var broken = await exported.StartAppAsync(modelDirectory: TestApp.UnloadableModel))
        {
            var (submitted, _) = await broken.SubmitAsync("""{"prompt": "x", "steps": 2}""");
            string id = IdOf(submitted);
            var message = (await broken.Messages.ReceiveMessageAsync()).Value;
            await broken.Queue.Process(Delivery.Of(message.Body.ToString(), broken.Options.MaxDequeueCount), default);
            Assert.Equal(1, Assert.Single(exported.Points(broken, "sdf.images"), p => (string?)Tag(p, "sdf.outcome") == "failed").GetSumLong());
            var run = Assert.Single(exported.Trace(ActivityContext.Parse((await broken.Store.GetAsync(id, default))!.TraceParent!, null).TraceId),
                s => s.DisplayName == "process generations");
            Assert.Equal((ActivityStatusCode.Error, "failed"), (run.Status, run.GetTagItem("sdf.job.outcome")));
        }
    }
}
