using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Schedulers;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Every rule a generation request must meet, one row each: the field it is about and its check. The API reports every broken
/// rule (RFC 9457 <c>errors</c>), the pipeline refuses with the first (<see cref="InvalidGenerationRequestException"/>), the
/// CLI names the option of that field. Rules that need the model read its <see cref="ModelProfile"/>; without one only the
/// others are checked.
/// </summary>
public static class GenerationRules
{
    /// <summary>A rule: <see cref="Check"/> says what is wrong with the request, or null. <see cref="NeedsModel"/>: skipped without a profile.</summary>
    private sealed record Rule(string Field, bool NeedsModel, Func<GenerationRequest, ModelProfile, string?> Check);

    private static Rule Request(string field, Func<GenerationRequest, string?> check) => new(field, false, (r, _) => check(r));
    private static Rule Model(string field, Func<GenerationRequest, ModelProfile, string?> check) => new(field, true, check);

    private static readonly Rule[] Table =
    [
        Request("prompt", r => r.Prompt is null ? "A prompt is required." : null),
        Request("negativePrompt", r => r.NegativePrompt is null ? "The negative prompt may be empty but not null." : null),
        Request("steps", r => r.Steps is < GenerationRequest.MinSteps or > GenerationRequest.MaxSteps
            ? $"Between {GenerationRequest.MinSteps} and {GenerationRequest.MaxSteps}." : null),
        Request("guidanceScale", r => r.GuidanceScale is { } g && !(g >= GenerationRequest.MinGuidance && g <= GenerationRequest.MaxGuidance)
            ? $"Between {GenerationRequest.MinGuidance} and {GenerationRequest.MaxGuidance}." : null),
        Request("seed", r => r.Seed is < 0 or > GenerationRequest.MaxSeed ? $"Between 0 and {GenerationRequest.MaxSeed}." : null),
        Request("scheduler", r => r.Scheduler is { } s && !SchedulerCatalog.IsKnown(s) ? $"Unknown scheduler '{s}'. One of: {string.Join(", ", SchedulerCatalog.Names)}." : null),
        Request("decoder", r => r.Decoder is { } d && !DecoderComponent.Names.Contains(d) ? $"Unknown decoder '{d}'. One of: {string.Join(", ", DecoderComponent.Names)}." : null),
        Request("tileSize", r => r.TileSize is not { } tile ? null
            : r.TiledDecode != true ? "A tile size needs tiled decoding on (tiledDecode)."
            : tile is < GenerationRequest.MinTileSize or > GenerationRequest.MaxTileSize || tile % 8 != 0
                ? $"A multiple of 8 from {GenerationRequest.MinTileSize} to {GenerationRequest.MaxTileSize} pixels; got {tile}." : null),
        Request("cacheInterval", r => r.CacheInterval is < 1 or > DeepCacheSchedule.MaxInterval ? $"From 1 (off) to {DeepCacheSchedule.MaxInterval}." : null),
        Request("cacheSchedule", r => r.CacheSchedule is { } c && !DeepCacheSchedule.Names.Contains(c)
            ? $"Unknown cache schedule '{c}'. One of: {string.Join(", ", DeepCacheSchedule.Names)}." : null),
        Request("initialLatents", r => r.InitialLatents is { } l && !l.All(float.IsFinite) ? "The initial latents hold NaN or infinite values." : null),
        Request("strength", r => r.Strength is not { } s ? null
            : r.InitImage is null ? "A strength needs an image (image-to-image)."
            : !(s > 0 && s <= 1) ? "Greater than 0 and at most 1." : null),
        Request("encoderNoise", r => r.EncoderNoise is not { } e ? null
            : r.InitImage is null ? "Encoder noise needs an image (image-to-image)."
            : !e.All(float.IsFinite) ? "The encoder noise holds NaN or infinite values." : null),

        Model("scheduler", (r, m) => r.Scheduler is { } s && m.Unsupported.TryGetValue(s, out string? why)
            ? $"This model's scheduler config cannot configure '{s}' ({why}). Choose one of: {string.Join(", ", m.SchedulerNames)}." : null),
        Model("karrasSigmas", (r, m) => r.KarrasSigmas == true && SchedulerCatalog.Find(r.Scheduler ?? m.DefaultScheduler) is { KarrasSigmas: false } s
            ? $"{s.Name} has no Karras sigmas; they exist for {string.Join(", ", SchedulerCatalog.WithKarrasSigmas)}." : null),
        Model("steps", (r, m) => r.Steps is { } n && Defaults(r, m) is { } d && n > d.MaxSteps
            ? $"{d.Scheduler} runs at most {d.MaxSteps} steps with this model (its original_inference_steps); 1–8 is what LCM is made for." : null),
        Model("negativePrompt", (r, m) => m.GuidanceDistilled && r.NegativePrompt is { Length: > 0 }
            ? "This model has guidance distilled into it (an LCM UNet with timestep_cond): it runs no unconditional pass, so it cannot use a negative prompt. Leave negativePrompt empty." : null),
        Model("decoder", (r, m) => r.Decoder is { } d && DecoderComponent.Names.Contains(d) && !m.Decoders.Contains(d)
            ? $"This model has no '{d}' decoder. Choose one of: {string.Join(", ", m.Decoders)}." : null),
        Model("tiledDecode", (r, m) => r.TiledDecode == true && (r.Decoder ?? m.DefaultDecoder) != DecoderComponent.Full
            ? $"Tiled decoding is for the full VAE; the {r.Decoder ?? m.DefaultDecoder} decoder decodes whole (TAESD needs little memory anyway)." : null),
        Model("cacheInterval", (r, m) => r.CacheInterval > 1 && !m.DeepCache
            ? "This model has no DeepCache graphs; make them with sdf optimize --deep-cache, or leave cacheInterval at 1." : null),
        Model("cacheSchedule", (r, m) => r.CacheInterval is > 1 and <= DeepCacheSchedule.MaxInterval && r.CacheSchedule == DeepCacheSchedule.NonUniform
            && Defaults(r, m) is { } d ? NonUniformProblem(r.Steps ?? d.Steps, r.CacheInterval.Value) : null),
        Model("size", (r, m) => (r.Width is { } w && w != m.Width) || (r.Height is { } h && h != m.Height)
            ? $"This model is compiled for {m.Width}×{m.Height} only; got {r.Width ?? m.Width}×{r.Height ?? m.Height}." : null),
        Model("initialLatents", (r, m) => r.InitialLatents is { } l && l.Length != m.LatentSize
            ? $"Initial latents must hold [1, {m.LatentChannels}, {m.LatentHeight}, {m.LatentWidth}] = {m.LatentSize} floats; got {l.Length}." : null),
        Model("image", (r, m) => r.InitImage is not { } image ? null
            : !m.ImageToImage ? "This model has no image encoder (vae_encoder/), so it cannot start from an image."
            : image.Width != m.Width || image.Height != m.Height || image.Rgb.Length != m.Width * m.Height * 3
                ? $"The init image must be {m.Width}×{m.Height} RGB (InitImage.Decode fits one); got {image.Width}×{image.Height}." : null),
        Model("strength", (r, m) => r.InitImage is null || r.Strength is <= 0 or > 1 || Defaults(r, m) is not { } d ? null
            : ImageStart.BeginIndex(r.Steps ?? d.Steps, r.Strength ?? GenerationRequest.DefaultStrength) >= (r.Steps ?? d.Steps)
                ? $"With {r.Steps ?? d.Steps} steps and strength {r.Strength ?? GenerationRequest.DefaultStrength}, int(steps × strength) = 0: no step would run; raise the strength or the steps." : null),
        Model("encoderNoise", (r, m) => r.InitImage is not null && r.EncoderNoise is { } e && e.Length != m.LatentSize
            ? $"Encoder noise must hold [1, {m.LatentChannels}, {m.LatentHeight}, {m.LatentWidth}] = {m.LatentSize} floats; got {e.Length}." : null),
    ];

    /// <summary>The defaults of the request's scheduler on this model; null when the model cannot run that scheduler (its own rule says so).</summary>
    private static GenerationDefaults? Defaults(GenerationRequest r, ModelProfile m) =>
        m.Schedulers.FirstOrDefault(s => s.Scheduler == (r.Scheduler ?? m.DefaultScheduler));

    private static string? NonUniformProblem(int steps, int interval)
    {
        try { DeepCacheSchedule.NonUniformSteps(steps, interval); return null; }
        catch (InvalidGenerationRequestException e) { return e.Reason; }
    }

    /// <summary>Every broken rule, at most one per field (the first); only the model-free ones when <paramref name="profile"/> is null.</summary>
    public static IReadOnlyList<(string Field, string Message)> Violations(GenerationRequest request, ModelProfile? profile)
    {
        var found = new List<(string Field, string Message)>();
        foreach (var rule in Table)
        {
            if ((rule.NeedsModel && profile is null) || found.Any(f => f.Field == rule.Field)) continue;
            if (rule.Check(request, profile!) is { } message) found.Add((rule.Field, message));
        }
        return found;
    }

    /// <exception cref="InvalidGenerationRequestException">The first broken rule.</exception>
    public static void ThrowIfInvalid(GenerationRequest request, ModelProfile? profile)
    {
        if (Violations(request, profile) is [var (field, message), ..]) throw new InvalidGenerationRequestException(field, message);
    }
}
