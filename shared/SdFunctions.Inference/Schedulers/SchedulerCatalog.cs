namespace SdFunctions.Inference.Schedulers;

/// <summary>
/// One scheduler as users and other tools know it: the API/CLI name, the diffusers class a bundle's scheduler_config.json names,
/// the sampler's name in AUTOMATIC1111's parameters text, whether it has Karras sigmas, whether it is a few-step sampler (LCM:
/// 4 steps and guidance off on a plain UNet, as diffusers' LCM-LoRA recipes run it), and how to build it from a config.
/// </summary>
public sealed record SchedulerInfo(string Name, string DiffusersClass, string SamplerName, bool KarrasSigmas, bool FewStep,
    Func<SchedulerConfig, IScheduler> Create)
{
    /// <summary>What a request that leaves them out runs: StableDiffusionPipeline's 50 steps at 7.5, or 4 steps at 1 (off) for a few-step sampler.</summary>
    public int DefaultSteps => FewStep ? 4 : 50;
    public double DefaultGuidance => FewStep ? 1.0 : 7.5;

    /// <summary>The most steps this scheduler runs with <paramref name="config"/>: LCM's distillation grid bounds it.</summary>
    public int MaxSteps(SchedulerConfig config, int bound) => FewStep ? Math.Min(bound, LcmScheduler.MaxStepsFor(config)) : bound;
}

/// <summary>
/// Every scheduler the pipeline has, one row each. The factory, the parameters text, the CLI's --scheduler help, request
/// validation and (checked by a test) the OpenAPI enum come from here: adding a scheduler is its class and one row.
/// </summary>
public static class SchedulerCatalog
{
    public static readonly IReadOnlyList<SchedulerInfo> All =
    [
        new(PndmScheduler.ApiName, "PNDMScheduler", "PLMS", KarrasSigmas: false, FewStep: false, c => new PndmScheduler(c)),
        new(DdimScheduler.ApiName, "DDIMScheduler", "DDIM", KarrasSigmas: false, FewStep: false, c => new DdimScheduler(c)),
        new(EulerDiscreteScheduler.ApiName, "EulerDiscreteScheduler", "Euler", KarrasSigmas: true, FewStep: false, c => new EulerDiscreteScheduler(c)),
        new(EulerAncestralScheduler.ApiName, "EulerAncestralDiscreteScheduler", "Euler a", KarrasSigmas: false, FewStep: false, c => new EulerAncestralScheduler(c)),
        new(LmsDiscreteScheduler.ApiName, "LMSDiscreteScheduler", "LMS", KarrasSigmas: true, FewStep: false, c => new LmsDiscreteScheduler(c)),
        new(DpmSolverMultistepScheduler.ApiName, "DPMSolverMultistepScheduler", "DPM++ 2M", KarrasSigmas: true, FewStep: false, c => new DpmSolverMultistepScheduler(c)),
        new(LcmScheduler.ApiName, "LCMScheduler", "LCM", KarrasSigmas: false, FewStep: true, c => new LcmScheduler(c)),
    ];

    /// <summary>Every name the pipeline accepts, in the order we list them to users.</summary>
    public static readonly IReadOnlyList<string> Names = [.. All.Select(s => s.Name)];

    /// <summary>The schedulers with Karras sigmas (diffusers' use_karras_sigmas); the others would ignore the option.</summary>
    public static readonly IReadOnlyList<string> WithKarrasSigmas = [.. All.Where(s => s.KarrasSigmas).Select(s => s.Name)];

    public static SchedulerInfo? Find(string name) => All.FirstOrDefault(s => s.Name == name);

    public static bool IsKnown(string name) => Find(name) is not null;

    /// <summary>The scheduler the bundle's config names (PNDM, SD 1.x's, for a class we do not have).</summary>
    public static SchedulerInfo DefaultFor(SchedulerConfig config) => All.FirstOrDefault(s => s.DiffusersClass == config.ClassName) ?? All[0];

    /// <summary>The sampler's name in AUTOMATIC1111's parameters text (the API name for one it does not know).</summary>
    public static string SamplerName(string name) => Find(name)?.SamplerName ?? name;

    /// <param name="karras">Override the config's use_karras_sigmas (Euler, LMS, DPM++ only).</param>
    public static IScheduler Create(string name, SchedulerConfig config, bool? karras = null)
    {
        var info = Find(name) ?? throw new ArgumentException($"Unknown scheduler '{name}'. Known: {string.Join(", ", Names)}.", nameof(name));
        return info.Create(karras is { } k ? config with { UseKarrasSigmas = k } : config);
    }

    /// <summary>Whether <paramref name="name"/> can be configured from <paramref name="config"/>; if not, why.</summary>
    public static bool TryCreate(string name, SchedulerConfig config, out string? whyNot)
    {
        try
        {
            Create(name, config);
            whyNot = null;
            return true;
        }
        catch (InvalidDataException e)
        {
            whyNot = e.Message;
            return false;
        }
    }
}
