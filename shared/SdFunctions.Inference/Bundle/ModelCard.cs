using System.Text.Json;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Inference.Bundle;

/// <summary>
/// What a model's authors say about running it, in an optional <see cref="FileName"/> beside model_index.json: the guidance it
/// was trained for (tiny-shapes: 3.0, where SD's 7.5 breaks its multistep schedulers), the steps it needs, and prompts that show
/// what it draws (the playground offers them; calibration runs on them). What the file leaves out keeps the defaults of the model's family.
/// </summary>
public sealed record ModelCard
{
    public const string FileName = "sdf_model.json";

    /// <summary>The guidance scale a request that leaves it out gets (a guidance-distilled UNet's embedded one too); not for a few-step sampler on a plain UNet, which runs without guidance.</summary>
    public double? GuidanceScale { get; init; }

    /// <summary>The steps a request that leaves them out gets, for every scheduler that is not a few-step sampler.</summary>
    public int? Steps { get; init; }

    public IReadOnlyList<string> ExamplePrompts { get; init; } = [];

    /// <exception cref="ModelBundleException">The file is there but is not a card this version reads.</exception>
    public static ModelCard? Read(string bundleDirectory)
    {
        string path = Path.Combine(bundleDirectory, FileName);
        if (!File.Exists(path)) return null;
        try
        {
            var card = JsonSerializer.Deserialize<ModelCard>(File.ReadAllBytes(path), Json) ?? throw new JsonException("it is null");
            if (card.GuidanceScale is { } g && !(g >= GenerationRequest.MinGuidance && g <= GenerationRequest.MaxGuidance))
                throw new ModelBundleException($"{path}: guidanceScale must be in {GenerationRequest.MinGuidance}–{GenerationRequest.MaxGuidance}; got {g}.");
            if (card.Steps is { } n && n is < GenerationRequest.MinSteps or > GenerationRequest.MaxSteps)
                throw new ModelBundleException($"{path}: steps must be in {GenerationRequest.MinSteps}–{GenerationRequest.MaxSteps}; got {n}.");
            return card;
        }
        catch (JsonException e) { throw new ModelBundleException($"{path}: not a model card ({e.Message}); see docs/quality.md for its fields.", e); }
    }

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { UnmappedMemberHandling = System.Text.Json.Serialization.JsonUnmappedMemberHandling.Disallow };
}
