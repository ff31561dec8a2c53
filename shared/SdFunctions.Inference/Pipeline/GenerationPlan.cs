using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Schedulers;

namespace SdFunctions.Inference.Pipeline;

/// <summary>How the UNet is conditioned: classifier-free guidance (two rows), a guidance embedding (LCM), or the prompt alone.</summary>
public enum GuidanceKind { ClassifierFree, Embedded, None }

/// <summary>
/// What one request means on one model, decided in one place (<see cref="GenerationPlanner"/>) before anything runs: the seed,
/// steps and guidance with the model's defaults filled in, the scheduler with its timesteps, how the UNet is conditioned and at
/// which batch, where the latents start and from which step, the DeepCache schedule, and the decoder. The pipeline's loop only
/// executes it.
/// </summary>
public sealed record GenerationPlan
{
    public required long Seed { get; init; }
    public required int Steps { get; init; }
    public required double GuidanceScale { get; init; }

    /// <summary>A fresh scheduler with its timesteps set for <see cref="Steps"/>.</summary>
    public required IScheduler Scheduler { get; init; }
    public required GuidanceKind Guidance { get; init; }
    public required int UNetBatch { get; init; }

    /// <summary>Image-to-image: how far to depart from the picture; null for text-to-image (from noise).</summary>
    public double? Strength { get; init; }

    /// <summary>The first step that runs (image-to-image skips the noisiest); the loop runs <see cref="Timesteps"/> from it.</summary>
    public required int BeginIndex { get; init; }
    public required IReadOnlyList<double> Timesteps { get; init; }
    public required DeepCacheSchedule Cache { get; init; }
    public required DecodePlan Decode { get; init; }
}

/// <summary>Turns a request (already checked by <see cref="GenerationRules"/>) into a <see cref="GenerationPlan"/> for a model.</summary>
public static class GenerationPlanner
{
    /// <param name="memory">The pipeline's memory plan: under a budget that needs it, every full-VAE decode is tiled.</param>
    public static GenerationPlan Plan(GenerationRequest request, ModelProfile profile, SchedulerConfig schedulerConfig, MemoryPlan memory)
    {
        var defaults = profile.DefaultsFor(request.Scheduler);
        int steps = request.Steps ?? defaults.Steps;
        double guidance = request.GuidanceScale ?? defaults.GuidanceScale;
        var scheduler = SchedulerCatalog.Create(defaults.Scheduler, schedulerConfig, request.KarrasSigmas);
        scheduler.SetTimesteps(steps);
        var kind = profile.GuidanceDistilled ? GuidanceKind.Embedded : guidance > 1.0 ? GuidanceKind.ClassifierFree : GuidanceKind.None;
        double? strength = request.InitImage is null ? null : request.Strength ?? GenerationRequest.DefaultStrength;
        int begin = strength is { } s ? ImageStart.BeginIndex(steps, s) : 0;
        var timesteps = scheduler.Timesteps.Skip(begin).ToList();
        return new GenerationPlan
        {
            Seed = request.Seed ?? Random.Shared.NextInt64(0, GenerationRequest.MaxSeed + 1),
            Steps = steps, GuidanceScale = guidance, Scheduler = scheduler, Guidance = kind,
            UNetBatch = profile.FixedUNetBatch ? profile.UNetBatch : kind == GuidanceKind.ClassifierFree ? 2 : 1,
            Strength = strength, BeginIndex = begin, Timesteps = timesteps,
            Cache = DeepCacheSchedule.Create(request.CacheInterval ?? 1, request.CacheSchedule ?? DeepCacheSchedule.Uniform, timesteps, steps),
            Decode = DecodeFor(request, profile, memory),
        };
    }

    /// <summary>The decoder the request gets, and whether it tiles: a budget that needs tiles tiles every full-VAE decode (over a request's tiledDecode: false); a request's own tile size is kept.</summary>
    public static DecodePlan DecodeFor(GenerationRequest request, ModelProfile profile, MemoryPlan memory)
    {
        string decoder = request.Decoder ?? profile.DefaultDecoder;
        int? plannedTile = decoder == DecoderComponent.Full ? memory.DecodeTileSize : null;
        bool tiled = request.TiledDecode == true || plannedTile is not null;
        return new DecodePlan(decoder, tiled, tiled ? request.TileSize ?? plannedTile : null);
    }
}
