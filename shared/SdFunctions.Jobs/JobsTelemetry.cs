using System.Diagnostics;
using System.Diagnostics.Metrics;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

/// <summary>
/// The service's traces and metrics, as System.Diagnostics activities and instruments (the Functions app exports them with
/// OpenTelemetry). One trace per job: the submit's "send generations" span, carried in the queue message as a W3C
/// traceparent, is the parent of every run's "process generations" span, and that of the pipeline's spans and the upload.
/// </summary>
public sealed class JobsTelemetry
{
    public const string Name = "SdFunctions.Jobs";

    /// <summary>The tag on every job span: the job's id.</summary>
    public const string JobIdTag = "sdf.job.id";

    internal static readonly ActivitySource Source = new(Name);

    private readonly Histogram<double> _queueWait, _generation, _unetStep, _modelLoad;
    private readonly Counter<long> _images, _requeued;

    public JobsTelemetry(IMeterFactory meters)
    {
        var meter = meters.Create(Name);
        _queueWait = meter.CreateHistogram<double>("sdf.job.queue_wait", "s", "From submission to the start of the job's first run.");
        _generation = meter.CreateHistogram<double>("sdf.generation.duration", "s", "One image in the pipeline: text encoding, the denoise loop, decoding.");
        _unetStep = meter.CreateHistogram<double>("sdf.unet.step.duration", "s", "The UNet calls of one denoise step.");
        _modelLoad = meter.CreateHistogram<double>("sdf.model.load.duration", "s", "Loading the model on an instance (once per instance).");
        _images = meter.CreateCounter<long>("sdf.images", "{image}", "Jobs that ended, by outcome (succeeded, failed, canceled).");
        _requeued = meter.CreateCounter<long>("sdf.jobs.requeued", "{job}", "Jobs the sweep queued again, by reason (never_queued, run_stopped).");
    }

    /// <summary>The submit's span; its id goes into the job record and every message of the job.</summary>
    internal static Activity? StartSend(string jobId, string queueName) =>
        Source.StartActivity("send generations", ActivityKind.Producer)?.SetTag(JobIdTag, jobId)
            .SetTag("messaging.operation.type", "send").SetTag("messaging.destination.name", queueName);

    /// <summary>A run, in the job's trace (from the message's traceparent), linked to the invocation that delivered it.</summary>
    internal static Activity? StartProcess(string jobId, string? traceParent, string queueName)
    {
        var invocation = Activity.Current?.Context;
        bool inJobTrace = ActivityContext.TryParse(traceParent, null, out var parent);
        var links = invocation is { } i && (!inJobTrace || i.TraceId != parent.TraceId) ? new[] { new ActivityLink(i) } : null;
        return Source.StartActivity("process generations", ActivityKind.Consumer, inJobTrace ? parent : invocation ?? default, links: links)
            ?.SetTag(JobIdTag, jobId).SetTag("messaging.operation.type", "process").SetTag("messaging.destination.name", queueName);
    }

    internal static Activity? StartUpload() => Source.StartActivity("upload image");

    /// <summary>Finding (or downloading) the bundle and creating its sessions; a child of the run that first needed the model.</summary>
    internal static Activity? StartModelLoad() => Source.StartActivity("load model");

    /// <summary>The trace context to carry: the current span's W3C traceparent (null when nothing is traced).</summary>
    internal static string? CurrentTraceParent() => Activity.Current is { IdFormat: ActivityIdFormat.W3C } a ? a.Id : null;

    internal void RecordQueueWait(TimeSpan wait) => _queueWait.Record(wait.TotalSeconds);

    internal void RecordModelLoad(TimeSpan load) => _modelLoad.Record(load.TotalSeconds);

    internal void RecordGeneration(GenerationResult result)
    {
        var tags = new TagList { { "sdf.scheduler", result.Scheduler }, { "sdf.decoder", result.Decoder }, { "sdf.conditioning", result.Conditioning } };
        _generation.Record(result.Timings.Total.TotalSeconds, tags);
        var unet = new TagList { { "sdf.conditioning", result.Conditioning }, { "sdf.unet.batch", result.UNetBatch } };
        foreach (var step in result.Timings.UNetRuns) _unetStep.Record(step.TotalSeconds, unet);
    }

    internal void RecordEnded(JobStatus outcome) =>
        _images.Add(1, new KeyValuePair<string, object?>("sdf.outcome", outcome.ToString().ToLowerInvariant()));

    internal void RecordRequeued(string reason) => _requeued.Add(1, new KeyValuePair<string, object?>("sdf.reason", reason));
}
