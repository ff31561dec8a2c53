using System.Text.Json;
using System.Text.Json.Serialization;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

public enum JobStatus { Queued, Running, Succeeded, Failed, Canceled }

/// <summary>What a client asked for, as validated; stored with the job and echoed in its resource.</summary>
public sealed record GenerationInput
{
    public required string Prompt { get; init; }
    public string NegativePrompt { get; init; } = "";

    /// <summary>Null: the model's default, recorded in the job's output once it has run.</summary>
    public int? Steps { get; init; }
    public double? GuidanceScale { get; init; }
    public long Seed { get; init; }
    public string? Scheduler { get; init; }
    public string? Decoder { get; init; }

    /// <summary>Decode the full VAE tile by tile (tiles of <see cref="ModelOptions.DecodeTileSize"/>): less memory, slightly different seams.</summary>
    public bool? TiledDecode { get; init; }

    /// <summary>DeepCache: the whole UNet every N-th call, its shallow branch between (a model optimized with --deep-cache); null = off.</summary>
    public int? CacheInterval { get; init; }

    /// <summary>uniform or nonuniform (DeepCache's quadratic schedule); null = uniform.</summary>
    public string? CacheSchedule { get; init; }
    public int Width { get; init; }
    public int Height { get; init; }

    /// <summary>Image-to-image: the init picture as received (kept beside the record, so a redelivered message can redo the job).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public InputImage? Image { get; init; }

    /// <summary>Image-to-image: how far to depart from the picture (0 &lt; s ≤ 1; int(steps·s) steps run); null for text-to-image.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? Strength { get; init; }

    /// <summary>Where to POST the job resource when it completes (and, if asked, starts).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public Webhooks.Webhook? Webhook { get; init; }

    /// <summary>How many images the job makes; image k has seed <see cref="Seed"/> + k.</summary>
    public int N { get; init; } = 1;

    /// <summary>png, webp or jpeg, and the quality of the lossy two (null for png).</summary>
    public string OutputFormat { get; init; } = ImageFile.Png;
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? Quality { get; init; }

    /// <summary>The pipeline's request for the job's first image (image k sets seed + k), with the job's init picture for image-to-image.</summary>
    public GenerationRequest ToRequest(InitImage? initImage) => new()
    {
        Prompt = Prompt, NegativePrompt = NegativePrompt, Steps = Steps, GuidanceScale = GuidanceScale,
        Seed = Seed, Scheduler = Scheduler, Decoder = Decoder, TiledDecode = TiledDecode,
        CacheInterval = CacheInterval, CacheSchedule = CacheSchedule, Width = Width, Height = Height,
        InitImage = initImage, Strength = initImage is null ? null : Strength,
    };
}

/// <summary>About how many jobs are ahead of a queued one (Storage queues only count approximately), and when that was read.</summary>
public sealed record QueuePosition(int ApproximateAhead, DateTimeOffset AsOf);

/// <summary>One image of a finished job: its index (the image route's ?index=), its seed and a read-only link.</summary>
public sealed record JobImage(int Index, long Seed, string? Url);

/// <summary>
/// An init picture as the client sent it: its format, its own size (it is scaled to cover the service's size and center-cropped),
/// its length and SHA-256, so a client can tell which picture a job used.
/// </summary>
public sealed record InputImage(string MediaType, int Width, int Height, long Bytes, string Sha256);

/// <summary>
/// Progress in denoising iterations: <see cref="Total"/> is how many the scheduler runs, <see cref="Steps"/> the steps asked for
/// (or the model's default). They differ for PNDM, which runs steps + 1 (its first step evaluates the UNet twice, as in diffusers).
/// </summary>
/// <see cref="Phase"/> says what a running job is doing: its instance is loading the model (seconds on a new instance), it is
/// generating (the steps count), or publishing (encoding and uploading its images); null once it has ended.
public sealed record JobProgress(int Step, int? Total, int? Steps = null, string? Phase = null)
{
    public const string Loading = "loading", Generating = "generating", Publishing = "publishing";
    public static readonly IReadOnlyList<string> Phases = [Loading, Generating, Publishing];
}

/// <summary>Seconds spent in each stage of a finished job.</summary>
public sealed record JobTimings
{
    public double QueuedSeconds { get; init; }
    public double ModelLoadSeconds { get; init; }
    public double EncodeSeconds { get; init; }
    public double DenoiseSeconds { get; init; }
    public double StepMedianSeconds { get; init; }
    public double DecodeSeconds { get; init; }
    public double UploadSeconds { get; init; }
    public double TotalSeconds { get; init; }
}

public sealed record JobOutput
{
    /// <summary>The first image's link (the only one for n = 1); <see cref="Images"/> lists every image.</summary>
    public string? ImageUrl { get; init; }
    public IReadOnlyList<JobImage> Images { get; init; } = [];
    public string? ContentType { get; init; }
    public long Seed { get; init; }
    public int Width { get; init; }
    public int Height { get; init; }
    public string? Scheduler { get; init; }

    /// <summary>What ran: the steps and guidance (defaults filled in), the decoder, the UNet's batch, conditioning and call count.</summary>
    public int Steps { get; init; }
    public double GuidanceScale { get; init; }
    public string? Decoder { get; init; }

    /// <summary>The tile side (px) when the VAE decoded tile by tile; absent for a whole decode.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? DecodeTileSize { get; init; }
    public int UNetBatch { get; init; }
    public string? Conditioning { get; init; }
    public int UNetCalls { get; init; }

    /// <summary>With DeepCache on: its interval, schedule and how many of the UNet calls ran only the shallow branch.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? CacheInterval { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? CacheSchedule { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? ShallowUNetCalls { get; init; }
    public string? Model { get; init; }

    /// <summary>Present (false) only when the same request would not give the same images: an encoder that samples without a seed.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public bool? Reproducible { get; init; }

    /// <summary>The instance's peak resident memory during the generation (absent where the OS cannot restart the peak).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public long? PeakMemoryBytes { get; init; }
    public JobTimings? Timings { get; init; }
}

/// <summary>
/// A job as stored (private blob JSON, updated with ETag concurrency). <see cref="CancelRequested"/> is how the
/// cancel endpoint reaches a running worker; <see cref="LastError"/> keeps the latest failure between retries.
/// </summary>
public sealed record JobRecord
{
    public required string Id { get; init; }
    public JobStatus Status { get; init; } = JobStatus.Queued;
    public JobProgress Progress { get; init; } = new(0, null);
    public DateTimeOffset CreatedAt { get; init; }
    public DateTimeOffset? StartedAt { get; init; }
    public DateTimeOffset? CompletedAt { get; init; }
    public int Attempt { get; init; }
    public required GenerationInput Input { get; init; }
    public JobOutput? Output { get; init; }
    public Problem? Error { get; init; }

    /// <summary>Each webhook event's delivery: pending (retrying), delivered or failed, with its attempts and last error.</summary>
    public IReadOnlyList<Webhooks.WebhookDeliveryState> Webhooks { get; init; } = [];

    /// <summary>The queue's approximate message count when the job was queued: about how many jobs were ahead of it.</summary>
    public QueuePosition? Queue { get; init; }

    /// <summary>What the run used, once the job has ended after running (or failed without running); null while it has not.</summary>
    public JobUsage? Usage { get; init; }
    public bool CancelRequested { get; init; }

    /// <summary>The latest failure between retries, with its internal detail (never shown to clients; its correlation id is).</summary>
    public Problem? LastError { get; init; }

    /// <summary>
    /// Which delivery of the job's message runs it now (a fresh token per delivery), and when that run last showed it is alive.
    /// Only the owner writes progress and the outcome; another delivery waits while the heartbeat is fresh and takes over once it is stale.
    /// </summary>
    public string? RunOwner { get; init; }
    public DateTimeOffset? HeartbeatAt { get; init; }

    /// <summary>The W3C traceparent of the submit's span: every message of the job carries it, so all its runs share its trace.</summary>
    public string? TraceParent { get; init; }

    [JsonIgnore]
    public bool IsFinished => Status is JobStatus.Succeeded or JobStatus.Failed or JobStatus.Canceled;

    /// <summary>A run holds the job and showed within <paramref name="ownerTimeout"/> that it is alive.</summary>
    public bool HasLiveOwner(DateTimeOffset now, TimeSpan ownerTimeout) =>
        Status == JobStatus.Running && RunOwner is not null && HeartbeatAt is { } beat && now - beat < ownerTimeout;
}

/// <summary>The job as clients see it (GET /api/generations/{id}).</summary>
public sealed record JobResource(
    string Id, JobStatus Status, JobProgress Progress, DateTimeOffset CreatedAt, DateTimeOffset? StartedAt,
    DateTimeOffset? CompletedAt, int Attempt, GenerationInput Input, JobOutput? Output, Problem? Error, JobUsage? Usage,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] QueuePosition? Queue = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] IReadOnlyList<Webhooks.WebhookDeliveryState>? Webhooks = null)
{
    /// <param name="imageUrls">One link per image (SAS or the image route), or null where none is shown (not succeeded).</param>
    public static JobResource From(JobRecord r, IReadOnlyList<string>? imageUrls) => new(
        r.Id, r.Status, r.Progress, r.CreatedAt, r.StartedAt, r.CompletedAt, r.Attempt, r.Input,
        r.Output is { } o ? o with
        {
            ImageUrl = imageUrls?.FirstOrDefault(),
            Images = [.. o.Images.Select(i => i with { Url = imageUrls is { } urls && i.Index < urls.Count ? urls[i.Index] : null })],
        } : null, r.Error, r.Usage, r.Status == JobStatus.Queued ? r.Queue : null, r.Input.Webhook is null ? null : r.Webhooks);
}

/// <summary>JSON settings shared by the store and the HTTP API: camelCase, enums as lower-case strings, no nulls dropped.</summary>
public static class JobJson
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase) },
    };
}
