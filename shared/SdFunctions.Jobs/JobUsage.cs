using System.Diagnostics;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

/// <summary>
/// What a job's run used, for pay-per-use billing: the process's CPU time across its generations (every core; generations run one
/// at a time per instance, so it is this job's), their wall time and time per stage, UNet calls and images made, which instance and
/// model. <see cref="Billable"/> is false for a job that failed through the service's fault. The model load is not counted: it is
/// the instance's, once (output.timings.modelLoadSeconds shows it).
/// </summary>
public sealed record JobUsage
{
    public double CpuSeconds { get; init; }
    public double WallSeconds { get; init; }

    /// <summary>Wall seconds per stage (encode, denoise, decode) summed over the images made.</summary>
    public IReadOnlyDictionary<string, double> StageSeconds { get; init; } = new Dictionary<string, double>();
    public int UNetCalls { get; init; }
    public int Images { get; init; }
    public string? InstanceId { get; init; }
    public string? Model { get; init; }
    public bool Billable { get; init; }

    /// <summary>This instance: App Service's WEBSITE_INSTANCE_ID, else the machine's name.</summary>
    public static string CurrentInstanceId => Environment.GetEnvironmentVariable("WEBSITE_INSTANCE_ID") is { Length: > 0 } id ? id : Environment.MachineName;

    /// <summary>For a job that ended before anything ran (or whose runs all died): nothing used.</summary>
    public static JobUsage Nothing(bool billable) => new() { InstanceId = CurrentInstanceId, Billable = billable };
}

/// <summary>Measures a run's <see cref="JobUsage"/>: started before its first generation, fed each result, stopped at the outcome.</summary>
public sealed class UsageMeter
{
    private readonly string _model;
    private readonly TimeSpan _cpuAtStart;
    private readonly Stopwatch _wall = Stopwatch.StartNew();
    private readonly Dictionary<string, double> _stages = new() { ["encode"] = 0, ["denoise"] = 0, ["decode"] = 0 };
    private int _unetCalls, _images;

    private UsageMeter(string model)
    {
        _model = model;
        _cpuAtStart = Process.GetCurrentProcess().TotalProcessorTime;
    }

    public static UsageMeter Start(string model) => new(model);

    public void Add(GenerationResult result)
    {
        _unetCalls += result.UNetCalls;
        _images++;
        _stages["encode"] += (result.Timings.Encode + result.Timings.ImageEncode).TotalSeconds;
        _stages["denoise"] += result.Timings.Denoise.TotalSeconds;
        _stages["decode"] += result.Timings.Decode.TotalSeconds;
    }

    public JobUsage Stop(bool billable) => new()
    {
        CpuSeconds = (Process.GetCurrentProcess().TotalProcessorTime - _cpuAtStart).TotalSeconds,
        WallSeconds = _wall.Elapsed.TotalSeconds,
        StageSeconds = new Dictionary<string, double>(_stages),
        UNetCalls = _unetCalls, Images = _images, InstanceId = JobUsage.CurrentInstanceId, Model = _model, Billable = billable,
    };
}
