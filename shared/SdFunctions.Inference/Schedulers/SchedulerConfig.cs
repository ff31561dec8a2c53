using System.Text.Json;

namespace SdFunctions.Inference.Schedulers;

/// <summary>
/// The keys of diffusers' <c>scheduler_config.json</c> that our schedulers read. A key the file leaves
/// out is null here and takes the default of the scheduler class that uses it, as in diffusers'
/// <c>Cls.from_config(other.config)</c> (e.g. timestep_spacing is "leading" for PNDM/DDIM, "linspace" for Euler).
/// </summary>
public sealed record SchedulerConfig
{
    public string? ClassName { get; init; }
    public int NumTrainTimesteps { get; init; } = 1000;
    public double BetaStart { get; init; } = 0.0001;
    public double BetaEnd { get; init; } = 0.02;
    public string BetaSchedule { get; init; } = "linear";
    public double[]? TrainedBetas { get; init; }
    public string PredictionType { get; init; } = "epsilon";
    public string? TimestepSpacing { get; init; }
    public int StepsOffset { get; init; }
    public bool? SetAlphaToOne { get; init; }
    public bool? SkipPrkSteps { get; init; }
    public bool? ClipSample { get; init; }
    public double ClipSampleRange { get; init; } = 1.0;
    public bool Thresholding { get; init; }
    public bool UseKarrasSigmas { get; init; }
    public int SolverOrder { get; init; } = 2;
    public string AlgorithmType { get; init; } = "dpmsolver++";
    public string SolverType { get; init; } = "midpoint";
    public bool LowerOrderFinal { get; init; } = true;
    public bool EulerAtFinal { get; init; }

    /// <summary>LCM: the step count the model was distilled with (its timestep grid) and the boundary-condition time scale.</summary>
    public int OriginalInferenceSteps { get; init; } = 50;
    public double TimestepScaling { get; init; } = 10.0;

    public static SchedulerConfig Load(string path)
    {
        try
        {
            return Parse(File.ReadAllText(path));
        }
        catch (Exception e) when (e is JsonException or InvalidDataException or FormatException or InvalidOperationException)
        {
            throw new InvalidDataException($"{path}: not a valid diffusers scheduler config ({e.Message}).", e);
        }
    }

    public static SchedulerConfig Parse(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var r = doc.RootElement;
        if (r.ValueKind != JsonValueKind.Object) throw new InvalidDataException("expected a JSON object");
        var c = new SchedulerConfig
        {
            ClassName = Str(r, "_class_name"),
            NumTrainTimesteps = Int(r, "num_train_timesteps") ?? 1000,
            BetaStart = Num(r, "beta_start") ?? 0.0001,
            BetaEnd = Num(r, "beta_end") ?? 0.02,
            BetaSchedule = Str(r, "beta_schedule") ?? "linear",
            TrainedBetas = r.TryGetProperty("trained_betas", out var tb) && tb.ValueKind == JsonValueKind.Array
                ? tb.EnumerateArray().Select(e => e.GetDouble()).ToArray() : null,
            PredictionType = Str(r, "prediction_type") ?? "epsilon",
            TimestepSpacing = Str(r, "timestep_spacing"),
            StepsOffset = Int(r, "steps_offset") ?? 0,
            SetAlphaToOne = Bool(r, "set_alpha_to_one"),
            SkipPrkSteps = Bool(r, "skip_prk_steps"),
            ClipSample = Bool(r, "clip_sample"),
            ClipSampleRange = Num(r, "clip_sample_range") ?? 1.0,
            Thresholding = Bool(r, "thresholding") ?? false,
            UseKarrasSigmas = Bool(r, "use_karras_sigmas") ?? false,
            SolverOrder = Int(r, "solver_order") ?? 2,
            AlgorithmType = Str(r, "algorithm_type") ?? "dpmsolver++",
            SolverType = Str(r, "solver_type") ?? "midpoint",
            LowerOrderFinal = Bool(r, "lower_order_final") ?? true,
            EulerAtFinal = Bool(r, "euler_at_final") ?? false,
            OriginalInferenceSteps = Int(r, "original_inference_steps") ?? 50,
            TimestepScaling = Num(r, "timestep_scaling") ?? 10.0,
        };
        c.Validate();
        return c;
    }

    private void Validate()
    {
        if (NumTrainTimesteps is < 2 or > 100_000) throw new InvalidDataException($"num_train_timesteps {NumTrainTimesteps} is out of range");
        if (PredictionType is not ("epsilon" or "v_prediction"))
            throw new InvalidDataException($"prediction_type '{PredictionType}' is not supported (epsilon, v_prediction)");
        if (TimestepSpacing is not (null or "leading" or "linspace" or "trailing"))
            throw new InvalidDataException($"timestep_spacing '{TimestepSpacing}' is not supported (leading, linspace, trailing)");
        if (BetaSchedule is not ("linear" or "scaled_linear" or "squaredcos_cap_v2") && TrainedBetas is null)
            throw new InvalidDataException($"beta_schedule '{BetaSchedule}' is not supported (linear, scaled_linear, squaredcos_cap_v2)");
        if (TrainedBetas is { } betas && betas.Length != NumTrainTimesteps)
            throw new InvalidDataException($"trained_betas has {betas.Length} values, num_train_timesteps is {NumTrainTimesteps}");
        if (OriginalInferenceSteps < 1) throw new InvalidDataException($"original_inference_steps {OriginalInferenceSteps} must be at least 1");
        if (Thresholding) throw new InvalidDataException("thresholding (dynamic thresholding for pixel-space models) is not supported");
    }

    private static JsonElement? Get(JsonElement r, string name) =>
        r.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;
    private static string? Str(JsonElement r, string n) => Get(r, n)?.GetString();
    private static double? Num(JsonElement r, string n) => Get(r, n)?.GetDouble();
    private static int? Int(JsonElement r, string n) => Get(r, n)?.GetInt32();
    private static bool? Bool(JsonElement r, string n) => Get(r, n)?.GetBoolean();
}
