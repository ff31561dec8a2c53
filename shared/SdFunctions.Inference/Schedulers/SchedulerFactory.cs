namespace SdFunctions.Inference.Schedulers;

/// <summary>Creates schedulers by their API name from a bundle's scheduler config.</summary>
public static class SchedulerFactory
{
    /// <summary>Every name the pipeline accepts, in the order we list them to users.</summary>
    public static readonly IReadOnlyList<string> Names = ["pndm", "ddim", "euler", "euler-a", "lms", "dpmpp-2m", "lcm"];

    /// <summary>The name of the scheduler class the bundle's config names (pndm for SD 1.x bundles).</summary>
    public static string DefaultName(SchedulerConfig config) => config.ClassName switch
    {
        "DDIMScheduler" => "ddim",
        "EulerDiscreteScheduler" => "euler",
        "EulerAncestralDiscreteScheduler" => "euler-a",
        "LMSDiscreteScheduler" => "lms",
        "DPMSolverMultistepScheduler" => "dpmpp-2m",
        "LCMScheduler" => "lcm",
        _ => "pndm",
    };

    public static bool IsKnown(string name) => Names.Contains(name);

    /// <summary>The schedulers that have Karras sigmas (diffusers' use_karras_sigmas); the others would ignore the option.</summary>
    public static readonly IReadOnlyList<string> WithKarrasSigmas = ["euler", "lms", "dpmpp-2m"];

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

    /// <param name="karras">Override the config's use_karras_sigmas (Euler, LMS, DPM++ only).</param>
    public static IScheduler Create(string name, SchedulerConfig config, bool? karras = null)
    {
        var c = karras is { } k ? config with { UseKarrasSigmas = k } : config;
        return name switch
        {
            "pndm" => new PndmScheduler(c),
            "ddim" => new DdimScheduler(c),
            "euler" => new EulerDiscreteScheduler(c),
            "euler-a" => new EulerAncestralScheduler(c),
            "lms" => new LmsDiscreteScheduler(c),
            "dpmpp-2m" => new DpmSolverMultistepScheduler(c),
            "lcm" => new LcmScheduler(c),
            _ => throw new ArgumentException($"Unknown scheduler '{name}'. Known: {string.Join(", ", Names)}.", nameof(name)),
        };
    }
}
