using System.Text.Json.Serialization;

namespace SdFunctions.Cli.Bench;

/// <summary>
/// What one probe process measured (seconds and bytes): the process's memory, and one typed part per kind of probe.
/// A reader names a figure by property, so a misspelt figure fails to compile instead of at the end of a long run.
/// </summary>
public sealed record ProbeResult(long PeakRssBytes, ResidentMemory? Resident = null, LoadFigures? Load = null, PipelineFigures? Pipeline = null,
    ImageFigures? Image = null, ModelRunFigures? ModelRun = null)
{
    [JsonIgnore] public LoadFigures LoadPart => Load ?? throw Missing(nameof(Load));
    [JsonIgnore] public PipelineFigures PipelinePart => Pipeline ?? throw Missing(nameof(Pipeline));
    [JsonIgnore] public ImageFigures ImagePart => Image ?? throw Missing(nameof(Image));
    [JsonIgnore] public ModelRunFigures ModelRunPart => ModelRun ?? throw Missing(nameof(ModelRun));

    private static InvalidOperationException Missing(string part) => new($"The bench probe returned no {part} figures (a probe of another kind was read as this one).");
}

/// <summary>Linux: resident memory at the end, split into anonymous (arenas, copies) and file-backed (memory-mapped weights).</summary>
public sealed record ResidentMemory(long? AnonBytes, long? FileBytes);

/// <summary>Loading the pipeline: the whole load, the sessions' share, and each session (by component) and whether it came from the cache.</summary>
public sealed record LoadFigures(double LoadS, double SessionsS, int Sessions, int SessionsFromCache, IReadOnlyDictionary<string, double> SessionSByComponent)
{
    public bool AllFromCache => SessionsFromCache == Sessions;
}

/// <summary>One generation's steps: the UNet call, the pipeline step around it, and the pipeline's own share.</summary>
public sealed record StepFigures(double UnetStepS, double StepS, double OverheadPerStepS, double OverheadS);

/// <summary>The service's pipeline after its warm-up: the first step, the text encoder, the VAE decode, whole generations.</summary>
public sealed record PipelineFigures(double WarmUpS, double FirstStepS, double TextEncoderS, double VaeDecodeS, StepFigures Steps,
    double? E2e20DpmppS = null, double? E2e50PndmS = null);

/// <summary>Whole images of one recipe (medians of the runs) and what the plan ran: UNet calls and batch, the shallow calls, the decoder's tiles.</summary>
public sealed record ImageFigures(double ImageS, double EncodeS, double DenoiseS, double DecodeS, int UNetCalls, int UNetBatch, int ShallowUNetCalls,
    int? DecodeTileSize, long? GenerationPeakBytes, long? ExpectedPeakBytes);

/// <summary>
/// One model run alone (the UNet step, or one VAE decode or tile): creating the session, the first run, the median run, and
/// <paramref name="PerImageS"/> (the runs one image needs). With ORT's profile: seconds per operator type and the largest node output.
/// </summary>
public sealed record ModelRunFigures(double CreateS, double FirstRunS, double RunS, double PerImageS,
    IReadOnlyDictionary<string, double>? SecondsByOperator = null, long? LargestNodeOutputBytes = null);
